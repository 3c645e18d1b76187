"""serve/guard.py and the answers every route shares, in process (the worker not started but for the time bound): the
Host check, the key checked before the body is read, body bounds, 500s with an id, /health without the key, /docs off,
--max-request-seconds."""

import asyncio
import time

import httpx2 as httpx
import pytest

from serving import counter
from sdcpu.serve import guard, queue
from sdcpu.serve.app import create_app, Settings
from sdcpu.serve.queue import Phase, Worker

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def app_for(prepare=lambda w: None, **settings):
    worker = Worker(prepare, max_queue=1)  # not started: "loading the model"
    settings = {"model": "random:tiny", "recipe": "baseline", "random_weights": True, "api_key": KEY, **settings}
    return worker, create_app(worker, Settings(**settings))


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


@pytest.mark.parametrize("path, limit", [("/v1/images/generations", guard.JSON_BYTES),
                                         ("/sdapi/v1/txt2img", guard.JSON_BYTES),
                                         ("/v1/images/edits", guard.FORM_BYTES),
                                         ("/sdapi/v1/img2img", guard.BODY_BYTES["/sdapi/v1/img2img"])])
def test_a_body_over_its_routes_bound_is_413_with_or_without_a_content_length(path, limit):
    _, app = app_for()
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
    assert call(app, "POST", "/v1/images/generations", json={"prompt": "x" * 1000}, headers=AUTH).status_code == 503


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
    worker.phase, worker.pipe = Phase.READY, object()  # a pipeline without a tokenizer: Service.limits raises
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
    _, open_app = app_for(api_key=None)
    assert call(open_app, "GET", "/health").json()["recipe"] == "baseline"


def test_a_failed_preparation_is_a_phase_with_its_error_and_health_says_why():
    def prepare(worker):
        worker.state = "optimizing"
        raise RuntimeError("no such model")

    worker, app = app_for(prepare, api_key=None)
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


@pytest.fixture(scope="module")
def ready(tiny):
    """An app whose worker runs random:tiny, without a key."""
    pipe = tiny()
    worker, app = app_for(lambda w: pipe, api_key=None)
    worker.start()
    deadline = time.monotonic() + 60
    while not worker.ready:
        assert time.monotonic() < deadline and worker.phase is not Phase.FAILED, worker.state
        time.sleep(0.01)
    yield worker, app
    worker.close()


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

    def fails(*args):
        raise RuntimeError("cannot open /home/someone/models/unet.bin")

    monkeypatch.setattr(queue.generate, "run_batch", fails)
    message = error_of(call(app, "POST", "/v1/images/generations", json=BODY), 500)
    assert message.startswith("generation failed; the server's log has the details under error id ")
    assert "/home/someone" not in message and "/home/someone" in caplog.text
    assert f"error id {message.rsplit(' ', 1)[1]}" in caplog.text
