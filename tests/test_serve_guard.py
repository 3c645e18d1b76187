"""serve/guard.py and the answers every route shares, in process (the worker not started but for the time bound): the
Host check, the key checked before the body is read, body bounds, 500s with an id, /health without the key, /docs off,
--max-request-seconds; and against a live in-process service, browsers' cross-site requests refused, --allow-origin's
CORS and the page's security headers."""

import asyncio
import base64
import concurrent.futures
import hashlib
import io
import json
import pickle
import re
import time

import httpx2 as httpx
import pytest
from PIL import Image

from serving import InProcess, counter, options
from sdcpu.cli import main
from sdcpu.serve import guard, queue
from sdcpu.serve.app import create_app, Settings
from sdcpu.serve.options import key_digest
from sdcpu.serve.queue import Phase, Worker
from sdcpu.serve.served import Models

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def app_for(prepare=lambda w, again: None, **settings):
    worker = Worker(Models.one("random:tiny", prepare, "baseline", True), max_queue=1)  # not started: "loading"
    return worker, create_app(worker, Settings(**{"key_digest": key_digest(KEY), **settings}))


def call(app, method, path, host="127.0.0.1:7860", **kwargs):
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def error_of(answer, status):
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json" and len(answer.text.splitlines()) == 1
    return answer.json()["error"]["message"]


def test_the_key_is_checked_before_a_byte_of_the_body_is_read():
    _, app = app_for()
    read, sent = [], []

    async def receive():
        read.append(1)
        return {"type": "http.request", "body": b"x" * 50 * 2**20}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "http_version": "1.1", "method": "POST", "path": "/v1/images/generations",
             "raw_path": b"/v1/images/generations", "query_string": b"", "root_path": "", "scheme": "http",
             "server": ("127.0.0.1", 7860), "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"127.0.0.1:7860"), (b"content-type", b"application/json"),
                         (b"content-length", str(50 * 2**20).encode())]}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 401 and not read


@pytest.fixture(scope="module")
def ready(tiny):
    """An app whose worker runs random:tiny, without a key."""
    pipe = tiny()
    worker, app = app_for(lambda w, again: pipe, key_digest=None)
    worker.start()
    deadline = time.monotonic() + 60
    while not worker.ready:
        assert time.monotonic() < deadline and worker.phase is not Phase.FAILED, worker.state
        time.sleep(0.01)
    yield worker, app
    worker.close()


@pytest.mark.parametrize("path, limit", [("/v1/images/generations", guard.JSON_BYTES),
                                         ("/sdapi/v1/txt2img", guard.JSON_BYTES),
                                         ("/v1/images/edits", guard.FORM_BYTES),
                                         ("/sdapi/v1/img2img", guard.BODY_BYTES["/sdapi/v1/img2img"])])
def test_a_body_over_its_routes_bound_is_413_with_or_without_a_content_length(ready, path, limit):
    _, app = ready  # an upload is read only once the model is ready (serve/uploads.py)
    form = path.endswith("edits")
    start = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n' if form else
             b'{"prompt": "')
    body = start + b"x" * limit
    message = error_of(call(app, "POST", path, content=body, headers=AUTH), 413)
    assert f"more than the {limit / 2**20:.0f} MiB" in message

    async def chunks():  # no Content-Length: counted as it is read
        for start in range(0, len(body), 2**20):
            yield body[start:start + 2**20]

    kind = "multipart/form-data; boundary=b" if form else "application/json"
    assert "MiB" in error_of(call(app, "POST", path, content=chunks(), headers={**AUTH, "Content-Type": kind}), 413)
    assert call(app, "GET", "/health").status_code == 200


def test_img2img_bound_holds_two_base64_uploads_of_50_mib():
    assert guard.BODY_BYTES["/sdapi/v1/img2img"] > 2 * 50 * 2**20 * 4 / 3


@pytest.mark.parametrize("host, status", [("127.0.0.1:7860", 503), ("localhost:7860", 503), ("[::1]:7860", 503),
                                          ("LOCALHOST", 503), ("box.lan:7860", 503), ("evil.example:7860", 400),
                                          ("127.0.0.1.evil.example", 400)])
def test_only_the_host_names_the_server_is_bound_to_are_answered(host, status):
    _, app = app_for(hosts=("box.lan",))
    answer = call(app, "GET", "/health", host=host)
    assert answer.status_code == status, answer.text
    if status == 400:
        assert "--allowed-host" in error_of(answer, 400)


def test_a_route_that_breaks_answers_500_json_with_an_id_and_is_counted(caplog):
    worker, app = app_for()
    worker.phase = Phase.READY  # a model never prepared: it has no facts, Service.limits raises
    message = error_of(call(app, "POST", "/v1/images/generations", json={"prompt": "x"}, headers=AUTH), 500)
    ident = message.rsplit(" ", 1)[1]
    assert message.startswith("internal error;") and "object" not in message and len(ident) == 8
    assert f"error id {ident}" in caplog.text and "Traceback" in caplog.text
    metrics = call(app, "GET", "/metrics", headers=AUTH).text
    assert counter(metrics, "sdcpu_requests_total", endpoint="/v1/images/generations", status="500") == 1


def test_refusals_are_counted_by_metrics():
    _, app = app_for()
    call(app, "POST", "/v1/images/generations", json={"prompt": "x"})
    call(app, "GET", "/health", host="evil.example")
    metrics = call(app, "GET", "/metrics", headers=AUTH).text
    assert counter(metrics, "sdcpu_requests_total", endpoint="other", status="401") == 1
    assert counter(metrics, "sdcpu_requests_total", endpoint="other", status="400") == 1


def test_health_without_the_key_says_only_ready_or_not():
    _, app = app_for()
    assert call(app, "GET", "/health").json() == {"status": "not ready"}
    full = call(app, "GET", "/health", headers=AUTH).json()
    assert full["model"] == "random:tiny" and full["state"] == "loading the model"
    _, open_app = app_for(key_digest=None)
    assert call(open_app, "GET", "/health").json()["recipe"] == "baseline"


def test_a_failed_preparation_is_a_phase_with_its_error_and_health_says_why():
    def prepare(worker, again):
        worker.state = "optimizing"
        raise RuntimeError("no such model")

    worker, app = app_for(prepare, key_digest=None)
    worker.start().close(10)
    assert worker.phase is Phase.FAILED and str(worker.error) == "no such model"
    health = call(app, "GET", "/health")
    assert health.status_code == 503 and health.json()["state"] == "failed: no such model"


def test_docs_are_off_unless_asked_for():
    _, app = app_for()
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert error_of(call(app, "GET", path), 404) == "Not Found"
    _, with_docs = app_for(docs=True)
    assert "/v1/images/generations" in call(with_docs, "GET", "/openapi.json").json()["paths"]
    assert call(with_docs, "GET", "/docs").status_code == 200


BODY = {"prompt": "x", "size": "64x64", "steps": 4}


def test_a_call_past_max_seconds_stops_at_its_next_step_is_answered_504_and_the_server_goes_on(ready):
    worker, app = ready
    worker.max_seconds = 1e-9  # any step takes longer
    try:
        message = error_of(call(app, "POST", "/v1/images/generations", json=BODY), 504)
    finally:
        worker.max_seconds = None
    assert "ran past --max-request-seconds 1e-09 and was stopped after 1 of " in message
    answer = call(app, "POST", "/v1/images/generations", json=BODY)
    assert answer.status_code == 200 and not answer.json()["sdcpu"]["interrupted"]


def test_a_failed_generation_answers_an_id_not_the_exception_text(ready, monkeypatch, caplog):
    _, app = ready

    def fails(*args, **kwargs):
        raise RuntimeError("cannot open /home/someone/models/unet.bin")

    monkeypatch.setattr(queue.generate, "run_batch", fails)
    message = error_of(call(app, "POST", "/v1/images/generations", json=BODY), 500)
    assert message.startswith("generation failed; the server's log has the details under error id ")
    assert "/home/someone" not in message and "/home/someone" in caplog.text
    assert f"error id {message.rsplit(' ', 1)[1]}" in caplog.text


def test_the_service_keeps_a_digest_of_the_key_never_the_key():
    key = "s3cret-key-for-the-cluster"
    kept = options("--api-key", key)
    assert key.encode() not in pickle.dumps(kept)  # what Ray stores on the cluster: a deployment's bound arguments
    _, app = app_for(key_digest=kept.key_digest)
    assert call(app, "GET", "/metrics", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert call(app, "GET", "/metrics", headers={"Authorization": f"Bearer {key}x"}).status_code == 401


def test_the_authorization_scheme_is_case_insensitive():
    _, app = app_for()
    for sent in (f"bearer {KEY}", f"BEARER {KEY}", f"Bearer  {KEY}"):  # RFC 7235: the scheme in any case, 1*SP
        assert call(app, "POST", "/v1/images/generations", json={"prompt": "x"},
                    headers={"Authorization": sent}).status_code == 503, sent  # past the key: the model is loading
    for sent in ("Bearer wrong", f"Basic {KEY}", f"Bearer{KEY}", KEY):
        error_of(call(app, "POST", "/v1/images/generations", json={"prompt": "x"}, headers={"Authorization": sent}),
                 401)


@pytest.fixture
def past_the_checks(monkeypatch):
    """`sdcpu serve` stops with AssertionError once its command line is accepted (it would load and serve)."""
    def accepted():
        raise AssertionError("the command line was accepted")

    monkeypatch.setattr("sdcpu.commands.serve.hardware.detect", accepted)
    monkeypatch.delenv("SDCPU_API_KEY", raising=False)


@pytest.mark.parametrize("key", ["clé", "two words", "tab\tkey"])
def test_a_key_a_client_cannot_send_as_it_is_is_refused_at_start(capsys, past_the_checks, key):
    assert main(["serve", "--recipe", "baseline", "--model", "random:tiny", "--api-key", key]) == 2
    err = capsys.readouterr().err
    assert "must be printable ASCII without spaces" in err and len(err.strip().splitlines()) == 1, err
    assert key not in err  # a secret, even a bad one, is not printed


def test_a_non_ascii_key_in_the_environment_is_refused_at_start(capsys, past_the_checks, monkeypatch):
    monkeypatch.setenv("SDCPU_API_KEY", "schlüssel")
    assert main(["serve", "--recipe", "baseline", "--model", "random:tiny"]) == 2
    err = capsys.readouterr().err
    assert "must be printable ASCII" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("given, sent", [("https://App.example:443", "https://app.example"),
                                         ("http://localhost:80/", "http://localhost"),
                                         ("http://localhost:8080", "http://localhost:8080"),
                                         ("https://app.example:80", "https://app.example:80"),
                                         ("http://[::1]:80", "http://[::1]")])
def test_an_allow_origin_is_kept_as_a_browser_sends_it_without_its_schemes_default_port(given, sent):
    assert options("--allow-origin", given).allowed_origins == (sent,)


@pytest.mark.parametrize("origin", ["*", "https://app.example/path", "null", "app.example"])
def test_an_allow_origin_that_is_not_an_origin_is_refused_by_the_parser(capsys, past_the_checks, origin):
    with pytest.raises(SystemExit) as exit:
        main(["serve", "--model", "random:tiny", "--allow-origin", origin])
    assert exit.value.code == 2 and f"{origin!r} is not an origin" in capsys.readouterr().err


ALLOWED = "http://app.example:3000"
EVIL = {"Origin": "https://evil.example", "Content-Type": "text/plain"}  # a form or fetch a browser sends unasked
GENERATE = json.dumps({"prompt": "x", "size": "64x64", "steps": 1})


@pytest.fixture(scope="module")
def allowing(sdcpu_home):
    """The service without a key, letting one other site's pages use it."""
    service = InProcess("--allow-origin", ALLOWED)
    yield service
    assert service.stop() == 0


def images_made(service) -> float:
    return counter(httpx.get(f"{service.url}/metrics").text, "sdcpu_images_generated_total")


def refused_cross_site(answer):
    assert "--allow-origin ORIGIN" in error_of(answer, 403)
    assert "access-control-allow-origin" not in answer.headers


def test_a_cross_site_simple_post_is_refused_and_never_reaches_its_route(server):
    before = images_made(server)
    refused_cross_site(httpx.post(f"{server.url}/v1/images/generations", content=GENERATE, headers=EVIL))
    refused_cross_site(httpx.post(f"{server.url}/sdapi/v1/txt2img", content=GENERATE,
                                  headers={"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"}))
    refused_cross_site(httpx.post(f"{server.url}/sdapi/v1/interrupt", headers={"Origin": "null"}))  # a sandboxed page
    other_port = server.url.rsplit(":", 1)[0] + ":1"  # same site, another origin
    refused_cross_site(httpx.post(f"{server.url}/sdapi/v1/interrupt", headers={"Origin": other_port}))
    assert images_made(server) == before


def test_a_cross_site_interrupt_loop_never_cuts_a_victims_job(server):
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 30}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        victim = pool.submit(httpx.post, f"{server.url}/sdapi/v1/txt2img", json=body, timeout=120)
        tries = 0
        while not victim.done():
            refused_cross_site(httpx.post(f"{server.url}/sdapi/v1/interrupt", headers=EVIL))
            tries += 1
        answer = victim.result()
    info = json.loads(answer.json()["info"])
    assert answer.status_code == 200 and tries > 1
    assert not info["interrupted"] and info["steps_done"] >= 30, info


def png_bytes(size=64) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), "gray").save(out, format="PNG")
    return out.getvalue()


def test_a_cross_origin_multipart_edit_is_refused(server):
    before = images_made(server)
    answer = httpx.post(f"{server.url}/v1/images/edits", headers={"Origin": "https://evil.example"},
                        files={"image": ("a.png", png_bytes(), "image/png")}, data={"prompt": "x", "steps": "4"})
    refused_cross_site(answer)
    assert images_made(server) == before


def test_same_origin_pages_and_clients_without_a_browsers_headers_are_served(server):
    before = images_made(server)
    for headers in ({}, {"Origin": server.url, "Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"},
                    {"Origin": server.url.replace("127.0.0.1", "localhost"), "Host": server.url.split("//")[1]
                     .replace("127.0.0.1", "localhost")}):
        answer = httpx.post(f"{server.url}/v1/images/generations", content=GENERATE,
                            headers={"Content-Type": "application/json", **headers}, timeout=60)
        assert answer.status_code == 200, (headers, answer.text)
    assert httpx.post(f"{server.url}/sdapi/v1/interrupt").json() == {"interrupted": False}
    assert httpx.get(f"{server.url}/sdapi/v1/progress", headers=EVIL).status_code == 200  # reads: the browser hides it
    assert images_made(server) == before + 4


def test_an_allowed_origin_gets_a_preflight_and_its_requests_served_with_cors(allowing):
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    preflight = httpx.options(f"{allowing.url}/v1/images/generations", headers={"Origin": ALLOWED, **ask})
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in preflight.headers["access-control-allow-methods"]
    allowed_headers = preflight.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed_headers and "content-type" in allowed_headers
    refused_cross_site(httpx.options(f"{allowing.url}/v1/images/generations",
                                     headers={"Origin": "https://evil.example", **ask}))
    answer = httpx.post(f"{allowing.url}/v1/images/generations", content=GENERATE, timeout=60,
                        headers={"Origin": ALLOWED, "Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == ALLOWED


def test_an_allowed_origins_preflight_needs_no_key_and_the_guards_answers_carry_cors():
    _, app = app_for(origins=(ALLOWED,))
    ask = {"Origin": ALLOWED, "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization"}
    preflight = call(app, "OPTIONS", "/sdapi/v1/txt2img", headers=ask)
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == ALLOWED
    refused = call(app, "POST", "/sdapi/v1/txt2img", json={"prompt": "x"}, headers={"Origin": ALLOWED})
    error_of(refused, 401)
    assert refused.headers["access-control-allow-origin"] == ALLOWED  # its page can read why


def test_the_page_has_its_security_headers_and_a_policy_it_works_under(server):
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    policy = dict(part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
    assert policy["connect-src"] == "'self'" and policy["img-src"] == "data:"  # its fetch, its previews
    for tag in ("script", "style"):
        (block,) = re.findall(rf"<{tag}>(.*?)</{tag}>", page.text, re.DOTALL)
        assert policy[f"{tag}-src"] == f"'sha256-{base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()}'"
    assert " style=" not in page.text and " on" not in re.sub(r"<script>.*?</script>", "", page.text, flags=re.DOTALL)
    assert httpx.get(f"{server.url}/health").headers["x-content-type-options"] == "nosniff"
