"""serve/uploads.py: uploads (edits, img2img) admitted before a byte of them is read (the model ready, the queue with
room, fewer than --max-uploads being read), parsed and decoded off the event loop, A1111's base64 with line breaks;
and (slow) against a live `sdcpu serve`, four concurrent 128 MiB img2img uploads with the server's memory bounded."""

import asyncio
import base64
import io
import json
import os
import threading
import time

import pytest
from PIL import Image

from serving import Server, load_benchmark
from sdcpu.serve import schemas, uploads
from sdcpu.serve.app import create_app, Settings
from sdcpu.serve.queue import Phase, Worker
from sdcpu.serve.served import Models

UPLOADS = ("/v1/images/edits", "/sdapi/v1/img2img")
FORM = "multipart/form-data; boundary=b"


def app_for(prepare, max_uploads=2):
    worker = Worker(Models.one("random:tiny", prepare, "baseline", True), max_queue=1)
    return worker, create_app(worker, Settings(max_uploads=max_uploads))


def asgi_call(app, path, chunks, answers):
    """POST PATH to APP with the body CHUNKS (an async iterator) at the ASGI level; ANSWERS gets (status, headers,
    body); returns how many body chunks the app asked for."""
    read, ended = [], []

    async def receive():
        if ended:  # the whole body sent: a client that stays connected until its answer
            await asyncio.Event().wait()
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            ended.append(1)
            return {"type": "http.request", "body": b"", "more_body": False}
        read.append(1)
        return {"type": "http.request", "body": chunk, "more_body": True}

    sent = []

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            body = b"".join(part.get("body", b"") for part in sent[1:])
            answers.append((sent[0]["status"], dict(sent[0]["headers"]), json.loads(body)))

    kind = FORM if path.endswith("edits") else "application/json"
    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"host", b"127.0.0.1:7860"), (b"content-type", kind.encode())], "scheme": "http",
             "server": ("127.0.0.1", 7860), "client": ("127.0.0.1", 5000)}
    return app(scope, receive, send), read


async def garbage():
    yield b"x" * 1000


@pytest.mark.parametrize("path", UPLOADS)
def test_an_upload_to_a_server_not_ready_is_503_before_a_byte_is_read(path):
    _, app = app_for(lambda w, again: None)  # the worker not started: "loading the model"
    answers = []
    call, read = asgi_call(app, path, garbage(), answers)
    asyncio.run(call)
    (status, headers, body), = answers
    assert status == 503 and headers[b"retry-after"] and not read, body


@pytest.fixture(scope="module")
def one_upload(tiny):
    """An app serving random:tiny that reads one upload at a time."""
    pipe = tiny()
    worker, app = app_for(lambda w, again: pipe, max_uploads=1)
    worker.start()
    deadline = time.monotonic() + 60
    while not worker.ready:
        assert time.monotonic() < deadline and worker.phase is not Phase.FAILED, worker.state
        time.sleep(0.01)
    yield app
    worker.close()


@pytest.mark.parametrize("path", UPLOADS)
def test_an_upload_past_max_uploads_is_503_unread_and_the_slot_is_freed_after(one_upload, path):
    app = one_upload

    async def scenario():
        started, release, answers = asyncio.Event(), asyncio.Event(), []

        async def slow():  # the first upload: its body arrives once the second has been answered
            started.set()
            await release.wait()
            yield b"not a body either route reads"

        first, _ = asgi_call(app, path, slow(), answers)
        first = asyncio.ensure_future(first)
        await started.wait()
        second, read = asgi_call(app, path, garbage(), answers)
        await second
        (status, headers, body), = answers
        assert status == 503 and headers[b"retry-after"] and not read, body
        assert "--max-uploads 1" in body["error"]["message"]
        release.set()
        await first
        assert answers[1][0] == 400, answers[1]  # the first was read, and refused for what it is
        third, read = asgi_call(app, path, garbage(), answers)
        await third
        assert answers[2][0] == 400 and read, answers[2]  # the slot is free again

    asyncio.run(scenario())


def test_base64_with_line_breaks_and_a_data_prefix_is_read_as_a1111_reads_it():
    data = os.urandom(3 * 2**20 + 1)  # more than one slice of uploads.BASE64_SLICE characters, not a multiple of 3
    assert schemas.decode_base64("init_images", base64.b64encode(data).decode()) == data
    assert schemas.decode_base64("mask", base64.encodebytes(data).decode()) == data  # a line break every 76
    crlf = base64.encodebytes(data).decode().replace("\n", "\r\n")
    assert schemas.decode_base64("mask", f"data:image/png;base64,{crlf}") == data
    for broken in (base64.b64encode(data).decode()[:-1], "not base64!", "data:image/png;base64,@@@@"):
        with pytest.raises(schemas.BadRequest, match="not base64"):
            schemas.decode_base64("mask", broken)


def test_img2img_is_parsed_and_its_base64_decoded_off_the_event_loop(one_upload, monkeypatch):
    threads = {}
    for module, name in ((schemas, "parse_json"), (uploads, "decode_base64")):
        real = getattr(module, name)

        def watched(*args, real=real, name=name):
            threads[name] = threading.get_ident()
            return real(*args)

        monkeypatch.setattr(module, name, watched)
    picture = io.BytesIO()
    Image.new("RGB", (64, 64)).save(picture, format="PNG")
    body = json.dumps({"init_images": [base64.b64encode(picture.getvalue()).decode()], "prompt": "x", "steps": 2,
                       "width": 64, "height": 64}).encode()

    async def post():
        answers = []

        async def chunks():
            yield body

        call, _ = asgi_call(one_upload, "/sdapi/v1/img2img", chunks(), answers)
        await call
        return threading.get_ident(), answers

    loop_thread, answers = asyncio.run(post())
    assert answers[0][0] == 200, answers
    assert set(threads) == {"parse_json", "decode_base64"} and loop_thread not in threads.values(), threads


@pytest.mark.slow  # a minute of both cores: four 128 MiB bodies made, sent, parsed and decoded
def test_four_concurrent_128_mib_uploads_keep_the_server_small(sdcpu_home):
    bench = load_benchmark("serve_uploads")
    data = bench.body()
    assert len(data) > 128 * 2**20
    server = Server("--max-uploads", "1", home=sdcpu_home)
    try:
        measured = bench.measure(server.url, server.proc.pid, data)
    finally:
        server.stop()
    answers = measured.answers
    assert all(status == 200 or (status == 503 and retry) for status, retry in answers), answers
    assert any(status == 200 for status, _ in answers), answers
    # one upload read at a time: its body (128 MiB), the parsed text (128 MiB), the decoded PNGs (96 MiB) and pixels
    # (96 MiB), and the jobs queued (a job holds its image and mask, 64 MiB): about 0.6 GiB, where four read at once
    # grew it by 2.0-2.2 GiB before uploads were admitted (issue 27). /health's latency meanwhile is the benchmark's
    # to measure (benchmarks/serve_uploads.py, BENCHMARKS.md): not asserted here
    assert measured.grown < 0.9 * 2**30, f"{measured.grown / 2**30:.2f} GiB"
