"""What every request passes before a route reads its body (an ASGI middleware, inside the metrics so its refusals
are counted): the Host header, where a browser sent it from, the API key, the body's size; and the one answer of an
unhandled exception. Every answer carries `X-Content-Type-Options: nosniff`.

- Host: only the names the server is bound to (localhost, 127.0.0.1, [::1], --host, each --allowed-host), else 400:
  a page elsewhere that rebinds its own DNS name to 127.0.0.1 sends its name as the Host, and is refused.
- Cross-site: a request of any method but GET and HEAD that a browser sent from a page of another origin (an `Origin`
  other than this server's own scheme://host:port, or `Sec-Fetch-Site` cross-site or same-site) is answered 403
  before any route runs, unless its origin is one of --allow-origin's; a request without either header (curl, httpx,
  the openai client) and the server's own page pass. So a web page elsewhere cannot interrupt or start jobs with a
  "simple" request, which a browser sends without asking first. A CORS preflight (OPTIONS) from an allowed origin
  passes without the key (a browser never sends credentials on one) to the CORS middleware inside, which answers it.
- Key (with --api-key): /v1/*, /sdapi/*, /internal/*, /controlnet/* and /metrics need `Authorization: Bearer KEY`
  (the scheme in any case, RFC 7235), else 401, before any byte of the body is read.
- Body size: a Content-Length over the route's bound is answered 413 unread; a body streamed without one is counted
  as it is read and answered 413 once past it. JSON bodies: 1 MiB. The edits form: an image and a mask of
  tasks.MAX_INPUT_BYTES and 1 MiB of fields (a job's edit too). A1111's img2img: its init image and mask as base64 (4/3 of their bytes,
  the bound schemas.decode_base64 holds each to) and 1 MiB of fields.
- A route that raises what no handler answers: 500 with a short message and an id; the details go to the log, under
  that id, never to the client (paths, library internals).
"""

import hmac
import json
import logging
import secrets

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

from sdcpu.pipeline import tasks
from sdcpu.serve.options import key_digest
from sdcpu.serve.schemas import MAX_BASE64_CHARS

log = logging.getLogger(__name__)

JSON_BYTES = 2**20
FORM_BYTES = 2 * tasks.MAX_INPUT_BYTES + 2**20  # /v1/images/edits: 101 MiB
BODY_BYTES = {"/v1/images/edits": FORM_BYTES, "/v1/jobs/edits": FORM_BYTES,
              "/sdapi/v1/img2img": 2 * MAX_BASE64_CHARS + 2**20}  # img2img: 138 MiB
NEEDS_KEY = ("/v1/", "/sdapi/", "/internal/", "/controlnet/", "/metrics")
LOOPBACK = ("localhost", "127.0.0.1", "::1")
READ_ONLY = ("GET", "HEAD")  # the methods a cross-site request may use: the routes behind them change nothing
FOREIGN_FETCH_SITES = ("cross-site", "same-site")  # Sec-Fetch-Site values of a page of another origin
NOSNIFF = (b"x-content-type-options", b"nosniff")


def incident(what: str, error: BaseException) -> str:
    """WHAT happened, logged with ERROR's details under a new id: the one-line message a 500 answers."""
    ident = secrets.token_hex(4)
    log.error("%s (error id %s)", what, ident, exc_info=error)
    return f"{what}; the server's log has the details under error id {ident}"


def authorized(headers, digest: bytes | None) -> bool:
    """No key is set (DIGEST None), or HEADERS carry `Authorization: Bearer KEY` (the scheme in any case) with the KEY
    whose key_digest is DIGEST."""
    if digest is None:
        return True
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    sent = credentials.lstrip(" ").encode("latin-1")  # the header's bytes, as Starlette decoded them
    return scheme.lower() == "bearer" and hmac.compare_digest(key_digest(sent), digest)


def foreign(headers, own_origin: str) -> bool:
    """HEADERS are a browser's request from a page of another origin than OWN_ORIGIN (scheme://host[:port])."""
    origin = headers.get("origin")
    if origin is not None and origin.lower() != own_origin:
        return True
    return headers.get("sec-fetch-site", "").lower() in FOREIGN_FETCH_SITES


def preflight(method: str, headers) -> bool:
    """A CORS preflight: what a browser sends before a request a page of another origin may not make unasked."""
    return method == "OPTIONS" and "origin" in headers and "access-control-request-method" in headers


def host_name(host: str) -> str:
    """A Host header's name, without its port and an IPv6 address's brackets, lowercased."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0]


class Guard:
    """The checks above around APP: the server answers to HOSTS (names, with or without brackets), a browser page on
    one of ORIGINS (scheme://host[:port], lowercase) may use it, and the API key of KEY_DIGEST (None: none) is asked."""

    def __init__(self, app, *, key_digest: bytes | None, hosts: tuple[str, ...], origins: tuple[str, ...] = ()):
        self.app, self.key_digest, self.origins = app, key_digest, set(origins)
        self.hosts = {name.lower().strip("[]") for name in hosts}  # names, without a port

    def allowed(self, origin: str | None) -> bool:
        """ORIGIN (a request's Origin header) is one of --allow-origin's."""
        return origin is not None and origin.lower() in self.origins

    def refusal(self, scope, headers, limit: int) -> tuple[int, str, dict] | None:
        """Why the request of SCOPE and HEADERS is refused before its route runs, as (status, message, headers), or
        None; LIMIT: its body's bound."""
        host, method, origin = headers.get("host", ""), scope["method"], headers.get("origin")
        if host_name(host) not in self.hosts:
            return 400, f"Host {host!r} is not a name this server answers to (start it with --allowed-host NAME)", {}
        allowed = self.allowed(origin)
        if method not in READ_ONLY and not allowed and foreign(headers, f"{scope['scheme']}://{host}".lower()):
            sender = repr(origin) if origin is not None else f"Sec-Fetch-Site {headers['sec-fetch-site']!r}"
            return 403, (f"a browser's request from a page of another site ({sender}) is refused: start the server "
                         "with --allow-origin ORIGIN to let a page on ORIGIN use it"), {}
        if (scope["path"].startswith(NEEDS_KEY) and not (allowed and preflight(method, headers))
                and not authorized(headers, self.key_digest)):
            return 401, "missing or wrong API key: send the header Authorization: Bearer KEY", \
                {"WWW-Authenticate": "Bearer"}
        length = headers.get("content-length", "")
        if length.isascii() and length.isdigit() and int(length) > limit:
            return 413, _too_large(limit), {}
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send, headers = _nosniff(send), Headers(scope=scope)
        limit = BODY_BYTES.get(scope["path"], JSON_BYTES)
        origin = headers.get("origin")
        # an allowed origin's page reads the guard's answers as it reads the routes' (CORS, inside, adds these)
        cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if self.allowed(origin) else {}
        if refused := self.refusal(scope, headers, limit):
            status, message, extra = refused
            return await _answer(send, status, message, "invalid_request_error", {**extra, **cors})
        read, started = 0, False

        async def bounded():
            nonlocal read
            message = await receive()
            read += len(message.get("body", b""))
            if read > limit:
                raise HTTPException(413, _too_large(limit))  # answered by the app's handler, as JSON
            return message

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded, watched)
        except Exception as error:  # noqa: BLE001 - any bug is answered 500 with an id, the server goes on
            if started:
                raise
            await _answer(send, 500, incident("internal error", error), "server_error", cors)


def _nosniff(send):
    """SEND, adding `X-Content-Type-Options: nosniff` to the answer's headers."""

    async def sent(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), NOSNIFF]}
        await send(message)

    return sent


def _too_large(limit: int) -> str:
    return f"the body is more than the {limit / 2**20:.0f} MiB this route accepts"


async def _answer(send, status: int, message: str, kind: str, headers=None) -> None:
    body = json.dumps({"error": {"message": message, "type": kind}}).encode()
    sent = {"content-type": "application/json", "content-length": str(len(body)), **(headers or {})}
    await send({"type": "http.response.start", "status": status,
                "headers": [(key.encode(), value.encode()) for key, value in sent.items()]})
    await send({"type": "http.response.body", "body": body})
