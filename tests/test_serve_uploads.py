"""serve/uploads.py: uploads (edits, img2img) admitted before a byte of them is read (the model ready, the queue with
room, fewer than --max-uploads being read), read and decoded off the event loop, A1111's base64 with line breaks;
and against a live `sdcpu serve`, four concurrent 128 MiB img2img uploads with the server's memory bounded and
/health answering beside them."""

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import threading
import time

import httpx2 as httpx
import numpy as np
import pytest
from PIL import Image

from serving import Server
from sdcpu.serve import schemas
from sdcpu.serve.app import create_app, Settings
from sdcpu.serve.queue import Phase, Worker

UPLOADS = ("/v1/images/edits", "/sdapi/v1/img2img")
FORM = "multipart/form-data; boundary=b"


def app_for(prepare, max_uploads=2):
    worker = Worker(prepare, max_queue=1)
    return worker, create_app(worker, Settings(model="random:tiny", recipe="baseline", random_weights=True,
                                               max_uploads=max_uploads))


def asgi_call(app, path, chunks, answers):
    """POST PATH to APP with the body CHUNKS (an async iterator) at the ASGI level; ANSWERS gets (status, headers,
    body); returns how many body chunks the app asked for."""
    read = []

    async def receive():
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
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
    _, app = app_for(lambda w: None)  # the worker not started: "loading the model"
    answers = []
    call, read = asgi_call(app, path, garbage(), answers)
    asyncio.run(call)
    (status, headers, body), = answers
    assert status == 503 and headers[b"retry-after"] and not read, body


@pytest.fixture(scope="module")
def one_upload(tiny):
    """An app serving random:tiny that reads one upload at a time."""
    pipe = tiny()
    worker, app = app_for(lambda w: pipe, max_uploads=1)
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


# The poller of /health: its own process, so the test's clients do not share its interpreter (and GIL).
POLLER = """
import sys, time, httpx2 as httpx
url, stop, out = sys.argv[1:]
import os
latencies = []
with httpx.Client() as client:
    while not os.path.exists(stop):
        began = time.perf_counter()
        assert client.get(url).status_code == 200
        latencies.append(time.perf_counter() - began)
        time.sleep(0.02)
open(out, "w").write(repr(latencies))
"""


def vm(pid: int, field: str) -> int:
    """A /proc/PID/status memory FIELD (VmRSS, VmHWM) in bytes."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def noise_png(seed: int) -> str:
    """A 4096x4096 RGB noise PNG (incompressible: 48 MiB, about the most one upload may be) as base64: 64 MiB."""
    pixels = np.random.default_rng(seed).integers(0, 256, (4096, 4096, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", compress_level=0)
    return base64.b64encode(out.getvalue()).decode()


def test_four_concurrent_128_mib_uploads_keep_the_server_small_and_health_answering(sdcpu_home, tmp_path):
    body = json.dumps({"init_images": [noise_png(1)], "mask": noise_png(2), "prompt": "x", "steps": 2,
                       "width": 64, "height": 64, "denoising_strength": 0.5, "mask_blur": 0}).encode()
    assert len(body) > 128 * 2**20
    server = Server("--max-uploads", "1", home=sdcpu_home)
    try:
        pid = server.proc.pid
        before = vm(pid, "VmRSS")
        stop, out = tmp_path / "stop", tmp_path / "latencies"
        poller = subprocess.Popen([sys.executable, "-c", POLLER, f"{server.url}/health", str(stop), str(out)])
        time.sleep(1)  # the poller has started polling
        answers = []

        def upload():
            answer = httpx.post(f"{server.url}/sdapi/v1/img2img", content=body, timeout=300,
                                headers={"Content-Type": "application/json"})
            answers.append((answer.status_code, answer.headers.get("retry-after"), answer.text[:200]))

        clients = [threading.Thread(target=upload) for _ in range(4)]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        stop.touch()
        assert poller.wait(timeout=30) == 0
        latencies = eval(out.read_text())
        grown = vm(pid, "VmHWM") - before
    finally:
        server.stop()
    assert all(status == 200 or (status == 503 and retry) for status, retry, _ in answers), answers
    assert any(status == 200 for status, _, _ in answers), answers
    # one upload read at a time: its body (128 MiB), the parsed text (128 MiB), the decoded PNGs (96 MiB) and pixels
    # (96 MiB), and the jobs queued (--max-queue 16: a job holds its image and mask, 64 MiB): about 0.6 GiB, where
    # four read at once grew it by 1.2 GiB before uploads were admitted (issue 27)
    assert grown < 0.9 * 2**30, f"{grown / 2**30:.2f} GiB"
    # the loop only gathers chunks (the JSON is parsed and the base64 decoded in a thread, the GIL held about 20 ms
    # at a time). Before, the loop parsed the JSON (0.3 s) and a thread decoded the base64 holding the GIL (0.65 s):
    # the slowest /health took 1.2 and 1.7 s here. A loaded 2-core machine (this test's four senders, the server's
    # threads, the other test process) alone delays a poll by up to 0.4 s now and then: most answers within 0.1 s
    # (the target), none as slow as a parse on the loop
    latencies.sort()
    assert len(latencies) > 10 and latencies[int(0.9 * len(latencies))] < 0.1 and latencies[-1] < 0.6, latencies[-5:]
