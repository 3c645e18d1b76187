"""Load test of a running `sdcpu serve`: CLIENTS threads share REQUESTS requests (bounded in count and time), and the
script prints what came back: requests, concurrency, 200s, 503s, other statuses, p50/p95 latency, the server's RSS
before and after (from its pid, when given). tests/test_serve.py runs the same `load` loop.

    python benchmarks/serve_load.py --url http://127.0.0.1:7860 --clients 16 --requests 200 --pid PID
    python benchmarks/serve_load.py --start --clients 16 --requests 200   # starts random:tiny itself, then stops it
    python benchmarks/serve_load.py --url http://127.0.0.1:7860 --clients 16 --requests 200  # `sdcpu serve --ray`
"""

import argparse
import collections
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import httpx2 as httpx

from sdcpu.system import children


@dataclass
class Report:
    statuses: collections.Counter = field(default_factory=collections.Counter)
    latencies: list = field(default_factory=list)  # seconds, of every answered request
    failures: list = field(default_factory=list)  # no answer: the exception's text
    retry_after_missing: int = 0  # 503s without a Retry-After header
    seconds: float = 0.0

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    def percentile(self, q: float) -> float:
        return statistics.quantiles(self.latencies, n=100)[int(q) - 1] if len(self.latencies) > 1 else 0.0


def load(url: str, *, clients: int, requests: int, body: dict, headers=None, timeout: float = 120,
         path: str = "/v1/images/generations", backoff: bool = False) -> Report:
    """CLIENTS threads post BODY to URL+PATH until REQUESTS have been sent; every request has a TIMEOUT. BACKOFF: a
    client answered 503 waits the Retry-After it was given before its next request, as a polite client does
    (without, it asks again at once: the most 503s)."""
    report, lock = Report(), threading.Lock()
    remaining = iter(range(requests))

    def client():
        with httpx.Client(base_url=url, headers=headers, timeout=timeout) as session:
            while True:
                with lock:
                    if next(remaining, None) is None:
                        return
                start = time.perf_counter()
                try:
                    answer = session.post(path, json=body)
                except httpx.HTTPError as error:
                    with lock:
                        report.failures.append(repr(error))
                    continue
                with lock:
                    report.statuses[answer.status_code] += 1
                    report.latencies.append(time.perf_counter() - start)
                    report.retry_after_missing += answer.status_code == 503 and "retry-after" not in answer.headers
                if backoff and answer.status_code == 503:
                    time.sleep(float(answer.headers.get("retry-after", 1)))

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report.seconds = time.perf_counter() - start
    return report


def rss_mib(pid: int) -> float:
    return children.memory_bytes("VmRSS", pid) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--start", action="store_true", help="start `sdcpu serve` on random:tiny (port 0) first")
    parser.add_argument("--pid", type=int, help="the server's pid, for its RSS")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--size", default="64x64")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--max-queue", default="4", help="with --start")
    parser.add_argument("--api-key")
    parser.add_argument("--backoff", action="store_true", help="after a 503, wait its Retry-After before asking again")
    args = parser.parse_args()
    server = None
    if args.start:
        server = subprocess.Popen([sys.executable, "-m", "sdcpu", "serve", "--model", "random:tiny", "--recipe",
                                   "baseline", "--port", "0", "--warmup-size", args.size, "--max-queue", args.max_queue],
                                  stdout=subprocess.PIPE, text=True)
        args.url = server.stdout.readline().split("listening on ")[1].split()[0]
        args.pid = server.pid
        while httpx.get(f"{args.url}/health").status_code != 200:
            time.sleep(0.2)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    before = rss_mib(args.pid) if args.pid else None
    report = load(args.url, clients=args.clients, requests=args.requests, headers=headers,
                  body={"prompt": "sailing ship in storm by Rembrandt", "size": args.size, "steps": args.steps},
                  backoff=args.backoff)
    after = rss_mib(args.pid) if args.pid else None
    others = {status: n for status, n in report.statuses.items() if status not in (200, 503)}
    print(f"requests {args.requests}, concurrency {args.clients}, {args.size}, {args.steps} steps, "
          f"{report.seconds:.1f} s in all")
    print(f"200: {report.statuses[200]}, 503: {report.statuses[503]}, other: {others or 0}, "
          f"no answer: {len(report.failures)}, 503 without Retry-After: {report.retry_after_missing}")
    print(f"latency p50 {report.percentile(50) * 1000:.0f} ms, p95 {report.percentile(95) * 1000:.0f} ms")
    if before is not None:
        print(f"server RSS {before:.0f} MiB before, {after:.0f} MiB after")
    if server:
        server.terminate()
        server.wait(timeout=60)
    return 0 if report.answered == args.requests and not others else 1


if __name__ == "__main__":
    sys.exit(main())
