"""Time from request to the first streamed preview of a running `sdcpu serve`, beside the whole image: the real openai
client streams /v1/images/generations with partial_images, and the same request is then made without streaming.

Each line: the time of every partial image and of the completed one, after the request was sent; then the plain
request's time (streaming's cost is the previews' decodes). The first stream pays the preview decoder's load once:
`--repeat 2` shows a warm one too.

    python benchmarks/stream_preview.py --model random:sd15 --size 512x512 --steps 20 --partial-images 3
    python benchmarks/stream_preview.py --url http://127.0.0.1:7860     # a server already running
"""

import argparse
import base64
import io
import subprocess
import sys
import time

import httpx2 as httpx
import openai
from PIL import Image


def stream_once(client, body: dict, partial_images: int) -> tuple[list[float], float]:
    """(seconds to each partial image, seconds to the completed image), from the request."""
    start, partials = time.perf_counter(), []
    for event in client.images.generate(**body, stream=True, partial_images=partial_images):
        Image.open(io.BytesIO(base64.b64decode(event.b64_json))).load()  # a real PNG each time
        if event.type.endswith("partial_image"):
            partials.append(time.perf_counter() - start)
        else:
            return partials, time.perf_counter() - start
    raise RuntimeError("the stream ended without a completed image")


def start_server(args) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen([sys.executable, "-m", "sdcpu", "serve", "--model", args.model, "--recipe", args.recipe,
                               "--port", "0", "--warmup-size", args.size], stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().split("listening on ")[1].split()[0]
    while httpx.get(f"{url}/health").status_code != 200:
        if server.poll() is not None:
            raise RuntimeError("the server exited before it was ready")
        time.sleep(1)
    return server, url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server; without it one is started (--model, --recipe)")
    parser.add_argument("--model", default="random:sd15")
    parser.add_argument("--recipe", default="auto")
    parser.add_argument("--size", default="512x512")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--partial-images", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2, help="streams made (the first loads the preview decoder)")
    args = parser.parse_args()
    server, url = (None, args.url) if args.url else start_server(args)
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=1800)
        body = {"prompt": "sailing ship in storm by Rembrandt", "size": args.size,
                "extra_body": {"steps": args.steps, "seed": 0}}
        print(f"{url}: {args.size}, {args.steps} steps, partial_images {args.partial_images}")
        for index in range(args.repeat):
            partials, completed = stream_once(client, body, args.partial_images)
            print(f"stream {index + 1}: partial images at " + ", ".join(f"{t:.2f}" for t in partials)
                  + f" s; completed at {completed:.2f} s")
        start = time.perf_counter()
        client.images.generate(**body)
        print(f"the same request unstreamed: {time.perf_counter() - start:.2f} s")
    finally:
        if server:
            server.terminate()
            server.wait(timeout=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
