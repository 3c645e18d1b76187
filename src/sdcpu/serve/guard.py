"""What every request passes before a route reads its body (an ASGI middleware, inside the metrics so its refusals
are counted): the Host header, the API key, the body's size; and the one answer of an unhandled exception.

- Host: only the names the server is bound to (localhost, 127.0.0.1, [::1], --host, each --allowed-host), else 400:
  a page elsewhere that rebinds its own DNS name to 127.0.0.1 sends its name as the Host, and is refused.
- Key (with --api-key): /v1/*, /sdapi/* and /metrics need `Authorization: Bearer KEY`, else 401, before any byte of
  the body is read.
- Body size: a Content-Length over the route's bound is answered 413 unread; a body streamed without one is counted
  as it is read and answered 413 once past it. JSON bodies: 1 MiB. The edits form: an image and a mask of
  tasks.MAX_INPUT_BYTES and 1 MiB of fields. A1111's img2img: its init image and mask as base64 (4/3 of their bytes,
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
from sdcpu.serve.schemas import MAX_BASE64_CHARS

log = logging.getLogger(__name__)

JSON_BYTES = 2**20
FORM_BYTES = 2 * tasks.MAX_INPUT_BYTES + 2**20  # /v1/images/edits: 101 MiB
BODY_BYTES = {"/v1/images/edits": FORM_BYTES, "/sdapi/v1/img2img": 2 * MAX_BASE64_CHARS + 2**20}  # img2img: 134 MiB
NEEDS_KEY = ("/v1/", "/sdapi/", "/metrics")
LOOPBACK = ("localhost", "127.0.0.1", "::1")


def incident(what: str, error: BaseException) -> str:
    """WHAT happened, logged with ERROR's details under a new id: the one-line message a 500 answers."""
    ident = secrets.token_hex(4)
    log.error("%s (error id %s)", what, ident, exc_info=error)
    return f"{what}; the server's log has the details under error id {ident}"


def authorized(headers, api_key: str | None) -> bool:
    """No key is set, or HEADERS carry `Authorization: Bearer KEY`."""
    sent = headers.get("authorization", "").encode()
    return api_key is None or hmac.compare_digest(sent, f"Bearer {api_key}".encode())


def host_name(host: str) -> str:
    """A Host header's name, without its port and an IPv6 address's brackets, lowercased."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0]


class Guard:
    def __init__(self, app, *, api_key: str | None, hosts: tuple[str, ...]):
        self.app, self.api_key = app, api_key
        self.hosts = {name.lower().strip("[]") for name in hosts}  # names, without a port

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers, path = Headers(scope=scope), scope["path"]
        limit = BODY_BYTES.get(path, JSON_BYTES)
        if host_name(headers.get("host", "")) not in self.hosts:
            return await _answer(send, 400, f"Host {headers.get('host', '')!r} is not a name this server answers to "
                                 "(start it with --allowed-host NAME)", "invalid_request_error")
        if path.startswith(NEEDS_KEY) and not authorized(headers, self.api_key):
            return await _answer(send, 401, "missing or wrong API key: send the header Authorization: Bearer KEY",
                                 "invalid_request_error", {"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length", "")
        if length.isascii() and length.isdigit() and int(length) > limit:
            return await _answer(send, 413, _too_large(limit), "invalid_request_error")
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
            await _answer(send, 500, incident("internal error", error), "server_error")


def _too_large(limit: int) -> str:
    return f"the body is more than the {limit / 2**20:.0f} MiB this route accepts"


async def _answer(send, status: int, message: str, kind: str, headers=None) -> None:
    body = json.dumps({"error": {"message": message, "type": kind}}).encode()
    sent = {"content-type": "application/json", "content-length": str(len(body)), **(headers or {})}
    await send({"type": "http.response.start", "status": status,
                "headers": [(key.encode(), value.encode()) for key, value in sent.items()]})
    await send({"type": "http.response.body", "body": body})
