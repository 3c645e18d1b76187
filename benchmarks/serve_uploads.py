"""Concurrent uploads to a running `sdcpu serve`: UPLOADS clients each post one ~128 MiB A1111 img2img body (an init
image and a mask, two 4096x4096 noise PNGs, about the most one upload may be) at once, while another process polls
/health every 20 ms; the script prints each answer's status, the server's peak RSS growth (VmHWM after less VmRSS
before, from its pid) and /health's latency percentiles. tests/test_serve_uploads.py runs the same `measure`.

    python benchmarks/serve_uploads.py --start --max-uploads 1   # starts random:tiny itself, then stops it
    python benchmarks/serve_uploads.py --url http://127.0.0.1:7860 --pid PID
"""

import argparse
import base64
import io
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import numpy as np
from PIL import Image

from sdcpu.system import children

# The poller of /health: its own process, so the clients sending the bodies do not share its interpreter (and GIL).
POLLER = """
import os, sys, time, httpx2 as httpx
url, stop, out = sys.argv[1:]
latencies = []
with httpx.Client() as client:
    while not os.path.exists(stop):
        began = time.perf_counter()
        assert client.get(url).status_code == 200
        latencies.append(time.perf_counter() - began)
        time.sleep(0.02)
open(out, "w").write(repr(latencies))
"""


@dataclass
class Measured:
    answers: list  # (status, Retry-After header or None) of each upload
    grown: int  # the server's peak RSS growth in bytes while they were served
    latencies: list  # seconds of each /health poll meanwhile, sorted


def noise_png(seed: int) -> str:
    """A 4096x4096 RGB noise PNG (incompressible: 48 MiB) as base64: 64 MiB."""
    pixels = np.random.default_rng(seed).integers(0, 256, (4096, 4096, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", compress_level=0)
    return base64.b64encode(out.getvalue()).decode()


def body() -> bytes:
    """One img2img upload: the image and a mask of 4096x4096 noise, a 64x64 2-step inpainting of them."""
    return json.dumps({"init_images": [noise_png(1)], "mask": noise_png(2), "prompt": "x", "steps": 2, "width": 64,
                       "height": 64, "denoising_strength": 0.5, "mask_blur": 0}).encode()


def measure(url: str, pid: int, data: bytes, uploads: int = 4) -> Measured:
    """UPLOADS concurrent posts of DATA to URL's img2img, /health polled meanwhile; PID: the server's."""
    before = children.memory_bytes("VmRSS", pid)
    with tempfile.TemporaryDirectory() as work:
        stop, out = Path(work) / "stop", Path(work) / "latencies"
        poller = subprocess.Popen([sys.executable, "-c", POLLER, f"{url}/health", str(stop), str(out)])
        time.sleep(1)  # the poller is polling
        answers = []

        def upload():
            answer = httpx.post(f"{url}/sdapi/v1/img2img", content=data, timeout=300,
                                headers={"Content-Type": "application/json"})
            answers.append((answer.status_code, answer.headers.get("retry-after")))

        clients = [threading.Thread(target=upload) for _ in range(uploads)]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        stop.touch()
        assert poller.wait(timeout=30) == 0
        latencies = sorted(eval(out.read_text()))
    return Measured(answers, children.memory_bytes("VmHWM", pid) - before, latencies)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url")
    parser.add_argument("--pid", type=int)
    parser.add_argument("--start", action="store_true", help="start `sdcpu serve --model random:tiny` here")
    parser.add_argument("--max-uploads", default="2", help="with --start: its --max-uploads")
    parser.add_argument("--uploads", type=int, default=4)
    args = parser.parse_args()
    server = None
    if args.start:
        server = subprocess.Popen([sys.executable, "-m", "sdcpu", "serve", "--model", "random:tiny", "--recipe",
                                   "baseline", "--port", "0", "--warmup-size", "64x64", "--max-uploads",
                                   args.max_uploads], stdout=subprocess.PIPE, text=True)
        line = next(line for line in server.stdout if "listening on" in line)
        args.url, args.pid = line.split("listening on ")[1].split()[0], server.pid
        while httpx.get(f"{args.url}/health").status_code != 200:
            time.sleep(0.2)
    try:
        measured = measure(args.url, args.pid, body(), args.uploads)
    finally:
        if server:
            server.terminate()
            server.wait(timeout=60)
    polls = measured.latencies
    print(f"answers: {sorted(measured.answers, key=str)}")
    print(f"server peak RSS growth: {measured.grown / 2**30:.2f} GiB")
    print(f"/health: {len(polls)} polls, median {statistics.median(polls) * 1000:.1f} ms, "
          f"p90 {polls[int(0.9 * len(polls))] * 1000:.1f} ms, max {polls[-1] * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
