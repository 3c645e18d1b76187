"""A live `sdcpu serve` on random:tiny for the serve tests, on a free loopback port: `Server`, the command as a
subprocess (what signals, --instances and the process's exit need), or `InProcess`, the same service on a real socket
served by uvicorn on a thread of the test process (the HTTP surface, with no interpreter to start)."""

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx

SRC = str(Path(__file__).parent.parent / "src")


class Server:
    def __init__(self, *args: str, home, port: int = 0):
        env = {**os.environ, "SDCPU_HOME": str(home), "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sdcpu", "serve", *defaults(args), "--port", str(port), "--warmup-size", "64x64",
             *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        seen = []
        for line in self.proc.stdout:  # --instances prints its plans first
            seen.append(line)
            if match := re.search(r"listening on (http://\S+)", line):
                break
        assert match, "".join(seen)
        self.url = match.group(1)
        self.wait_ready()

    def wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx.get(f"{self.url}/health").status_code == 200:
                return
            assert self.proc.poll() is None, self.proc.stdout.read()
            time.sleep(0.2)
        raise TimeoutError("the server did not get ready")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=60)


class InProcess:
    """The service `sdcpu serve ARGS` runs (serve.service.build, as the command and each Ray replica build it), served
    by uvicorn on a thread; returned once its worker is ready (the model loaded and warmed up)."""

    def __init__(self, *args: str):
        import uvicorn

        from sdcpu.serve import service
        from sdcpu.serve.queue import Phase
        from sdcpu.system import hardware

        self.key = args[args.index("--api-key") + 1] if "--api-key" in args else None  # what client() sends
        worker, app = service.build(options(*args), hardware.detect(),
                                    on_fatal=lambda error: setattr(self.server, "should_exit", True))
        self.worker = worker  # the service's queue.Worker: its pipeline is the one served
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))  # off the main thread: no signals
        sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 120
        while not worker.ready:
            assert self.thread.is_alive() and worker.phase is not Phase.FAILED, worker.state
            assert time.monotonic() < deadline, "the service did not get ready"
            time.sleep(0.05)

    def stop(self) -> int:
        """Shut down as uvicorn does on a signal (requests in flight finish, the worker closes); 0 when it did."""
        self.server.should_exit = True
        self.thread.join(timeout=60)
        return int(self.thread.is_alive())


OTHER = "127.0.0.2"  # another client: another peer address on loopback


def client(server: InProcess, address: str = "127.0.0.1") -> httpx.Client:
    """An httpx client of SERVER sending its API key, from ADDRESS (OTHER: another peer)."""
    headers = {"Authorization": f"Bearer {server.key}"} if server.key else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=120,
                        transport=httpx.HTTPTransport(local_address=address))


def options(*args: str):
    """The service.Options of `sdcpu serve ARGS` on random:tiny (with any other --model or --models-dir in ARGS), recipe
    baseline, warmed up at 64x64: what the command serves, made by its own code."""
    from sdcpu.cli import build_parser
    from sdcpu.commands.serve import served_models, service_options
    from sdcpu.system import hardware

    parsed = build_parser().parse_args(["serve", *defaults(args), "--warmup-size", "64x64", *args])
    return service_options(parsed, served_models(parsed, hardware.detect())[0])


def defaults(args) -> list[str]:
    """random:tiny and the baseline recipe where ARGS name no model or recipe (both options repeat: one per model; a
    --models-dir's come after random:tiny)."""
    return [*(() if "--model" in args else ("--model", "random:tiny")),
            *(() if "--recipe" in args else ("--recipe", "baseline"))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def counter(metrics_text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text, 0 when absent."""
    want = ",".join(f'{key}="{value}"' for key, value in labels.items())
    for line in metrics_text.splitlines():
        if line.startswith(f"{name}{{{want}}} " if labels else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def load_benchmark(name: str = "serve_load"):
    """benchmarks/NAME.py as a module: the tests run its loops (serve_load's load, serve_uploads' measure)."""
    import importlib.util

    path = Path(__file__).parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
