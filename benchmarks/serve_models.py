"""Several models in one server: the time a request takes when it switches models (A -> B -> A -> B), with both held
or with a --max-memory that holds one at a time (the other prepared again from sdcpu's caches), beside the same
request to the model already in use; the server's RSS now and at its peak.

    SDCPU_HOME=... python benchmarks/serve_models.py --model random:sd15 --model random:sdxl-turbo \\
        --recipe auto --recipe baseline --max-memory 12

It starts `sdcpu serve` itself (a free port), waits for /health, prints each model's first preparation (load,
conversion where its cache was cold, warm-up; its RSS growth), then the requests in order.
"""

import argparse
import os
import re
import subprocess
import sys
import threading
import time

import httpx2 as httpx

from sdcpu.system import children


def rss_gib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of PID, GiB."""
    return tuple(children.memory_bytes(key, pid) / 2**30 for key in ("VmRSS", "VmHWM"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--recipe", action="append", default=[])
    parser.add_argument("--max-memory")
    parser.add_argument("--size", default="512x512")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--order", default="0,0,1,1,0,1,0", help="the models asked for, by index")
    args = parser.parse_args()
    command = [sys.executable, "-m", "sdcpu", "serve", "--port", "0", "--warmup-size", args.size]
    for model in args.model:
        command += ["--model", model]
    for recipe in args.recipe:
        command += ["--recipe", recipe]
    if args.max_memory:
        command += ["--max-memory", args.max_memory]
    start = time.perf_counter()
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in server.stdout:
            print(line.rstrip(), flush=True)
            if match := re.search(r"listening on (http://\S+)", line):
                url = match.group(1)
                break
        else:
            raise SystemExit(f"the server exited: {server.wait()}")
        threading.Thread(target=lambda: [print(line.rstrip(), flush=True) for line in server.stdout],
                         daemon=True).start()  # the rest of its output, read so that its pipe never fills
        while httpx.get(f"{url}/health", timeout=10).status_code != 200:
            assert server.poll() is None, "the server exited"
            time.sleep(1)
        health = httpx.get(f"{url}/health").json()
        print(f"ready after {time.perf_counter() - start:.1f} s; RSS {rss_gib(server.pid)[0]:.2f} GiB "
              f"(peak {rss_gib(server.pid)[1]:.2f}), budget {health['max_memory_gib']:.1f} GiB")
        for model in health["models"]:
            print(f"  {model['name']} ({model['recipe']}): first preparation {model['load_seconds']} s, "
                  f"{model['gib']} GiB, held {model['held']}")
        print("| # | model | s | prepared again | RSS GiB | peak RSS GiB |\n|---|---|---|---|---|---|")
        width, height = args.size.split("x")
        for index, which in enumerate(int(i) for i in args.order.split(",")):
            name = args.model[which]
            loads = {m["name"]: m["loads"] for m in httpx.get(f"{url}/health").json()["models"]}
            began = time.perf_counter()
            answer = httpx.post(f"{url}/v1/images/generations", timeout=3600, json={
                "prompt": "a castle", "size": f"{width}x{height}", "steps": args.steps, "seed": 1, "model": name})
            seconds = time.perf_counter() - began
            answer.raise_for_status()
            again = {m["name"]: m["loads"] for m in httpx.get(f"{url}/health").json()["models"]}[name] > loads[name]
            rss, peak = rss_gib(server.pid)
            print(f"| {index + 1} | {name} | {seconds:.1f} | {'yes' if again else 'no'} | {rss:.2f} | {peak:.2f} |",
                  flush=True)
    finally:
        server.terminate()
        server.wait(timeout=120)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
