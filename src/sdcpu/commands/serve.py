"""`sdcpu serve`: an image service (OpenAI's and AUTOMATIC1111's APIs, a jobs API, a web page at /) keeping the
optimized pipelines of its models warm (`--model` once or several times). It listens at once and loads, optimizes and
warms up each model behind /health (503 until ready).
"""

import argparse
import dataclasses
import ipaddress
import os
import re
import signal
import socket
import sys
from pathlib import Path

from sdcpu import models, recipes
from sdcpu.commands.options import add_model, add_recipe, finite, given_models, given_recipes, resolve_recipe
from sdcpu.errors import UsageError
from sdcpu.pipeline import generate
from sdcpu.recipes import relaunch
from sdcpu.serve.options import KEPT_JOBS, MEMORY_SHARE, Model, Options, Replicas, key_digest
from sdcpu.system import hardware, launcher, ray_shares
from sdcpu.system.instances import run_instances

ORIGIN = re.compile(r"(https?://(?:[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?)/?")  # a browser's Origin, a / after it


def register(sub):
    p = sub.add_parser("serve", help="serve images over HTTP (OpenAI and A1111 APIs, a web page)", description=__doc__)
    add_model(p, repeat=True)
    add_recipe(p, quality=False, repeat=True)
    p.add_argument("--models-dir", metavar="DIR",
                   help="serve every diffusers folder and .safetensors file in DIR too (after any --model, by name: "
                        "requests name each by its folder or file name)")
    p.add_argument("--max-memory", type=finite, metavar="GIB",
                   help="what the models held may take, in GiB: with several --model, the least recently used are "
                        f"released to fit and prepared again (from sdcpu's caches) when asked for (default "
                        f"{MEMORY_SHARE:.0%}% of this machine's memory)")
    p.add_argument("--host", default=Options.host, help="address to listen on (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=Options.port, help="port (default %(default)s; 0: a free one, printed)")
    p.add_argument("--api-key", default=os.environ.get("SDCPU_API_KEY"),
                   help="require Authorization: Bearer KEY on the APIs and /metrics (default: $SDCPU_API_KEY, else "
                        "none; printable ASCII without spaces, anything else refused)")
    p.add_argument("--insecure-no-key", action="store_true",
                   help="allow a --host other than loopback without an API key (anyone who reaches it can use it)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a Host name clients reach this server by, besides localhost, 127.0.0.1, [::1] and --host "
                        "(repeatable); requests naming another get 400 (DNS rebinding)")
    p.add_argument("--allow-origin", action="append", default=[], type=_origin, metavar="ORIGIN",
                   help="a web page's origin (scheme://host[:port], as its browser sends it) that may use the APIs "
                        "with CORS (repeatable); a browser's request from any other site but GET is refused 403")
    p.add_argument("--docs", action="store_true",
                   help="serve /docs, /redoc and /openapi.json (FastAPI's Swagger UI loads its script from a CDN)")
    p.add_argument("--max-queue", type=int, default=Options.max_queue,
                   help="requests that may wait for the worker; more are answered 503 (default %(default)s)")
    p.add_argument("--max-uploads", type=int, default=Options.max_uploads,
                   help="uploads (edits, img2img) read and decoded at once, each up to 0.45 GiB while it is; more are "
                        "answered 503 unread (default %(default)s)")
    p.add_argument("--max-batch", type=int, default=Options.max_batch,
                   help="images one pipeline call may make for waiting requests of the same size, steps, guidance "
                        "and sampler (default %(default)s: no batching; benchmarks/serve_batching.py measures it)")
    p.add_argument("--max-request-seconds", type=float, metavar="S",
                   help="stop a pipeline call still running S seconds after it began, at its next step, and answer "
                        "its requests 504 (default: no bound)")
    p.add_argument("--drain-seconds", type=float, default=Options.drain_seconds, metavar="S",
                   help="on SIGTERM, stop taking requests and finish those queued and running for up to S seconds; "
                        "any left then are answered 503 (default %(default)s)")
    p.add_argument("--job-seconds", type=finite, default=Options.job_seconds, metavar="S",
                   help="keep a finished job of the jobs API (/v1/jobs) and its images S seconds, then forget it "
                        f"(default %(default)g; at most {KEPT_JOBS} finished jobs are kept)")
    p.add_argument("--max-size", type=int, default=Options.max_size,
                   help="the largest width or height served (default %(default)s)")
    p.add_argument("--warmup-size",
                   help="size of the one-step warm-up call made before /health says ready (default: the model's, "
                        "where known before it loads, a random:ARCH's or a diffusers folder's; else 512x512)")
    p.add_argument("--instances", type=int, default=1,
                   help="N servers sharing --port (SO_REUSEPORT: the kernel spreads connections), each pinned to its "
                        "share of the cores with its own copy of the model; /metrics counts per instance (default 1)")
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # set on each of --instances' copies
    ray = p.add_argument_group("Ray Serve (sdcpu.serve.ray_deploy)")
    ray.add_argument("--ray", nargs="?", const=ray_shares.LOCAL, metavar="ADDRESS",
                     help="serve as a Ray Serve application: alone, on a Ray started here for this machine's cores; "
                          "with ADDRESS (host:port of a head node, or auto), on that cluster")
    ray.add_argument("--replicas", type=int, metavar="N", help="with --ray: N replicas, each a warm pipeline (default 1)")
    ray.add_argument("--min-replicas", type=int, metavar="N",
                     help="with --ray and --max-replicas: Ray's autoscaler keeps at least N replicas (default 1)")
    ray.add_argument("--max-replicas", type=int, metavar="N",
                     help="with --ray: autoscale up to N replicas, adding one while requests wait")
    ray.add_argument("--cores-per-replica", type=int, metavar="K",
                     help="with --ray: the physical cores each replica asks Ray for, pins itself to and runs torch's "
                          "threads on (default: this machine's usable physical cores / the most replicas)")
    p.add_argument("--lora-dir", metavar="DIR",
                   help="LoRAs requests may name (its .safetensors files, by stem): <lora:name:weight> in a prompt, "
                        "or the OpenAI routes' `loras` field; never a path or URL from the network")
    p.add_argument("--trust-pickle", action="store_true", help="allow .ckpt/.bin pickle checkpoints (they can run code)")
    p.set_defaults(func=run)


def run(args) -> int:
    # 1. Check every input before the slow load; listen on the port, so a taken one fails now.
    _check_access(args.host, args.api_key, args.insecure_no_key)
    cpu = hardware.detect()
    served, why_auto = served_models(args, cpu)
    recipe = served[0].recipe
    if args.max_memory is not None and args.max_memory <= 0:
        raise UsageError(f"--max-memory must be more than 0 GiB, got {args.max_memory:g}")
    if args.lora_dir and not os.path.isdir(args.lora_dir):
        raise UsageError(f"--lora-dir {args.lora_dir}: not a folder")
    for name in ("max_queue", "max_uploads", "max_batch", "max_size", "instances"):
        value = getattr(args, name)
        if value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for model in served:
        recipes.unbatchable(model.recipe, args.max_batch)
    if args.max_request_seconds is not None and not args.max_request_seconds > 0:
        raise UsageError(f"--max-request-seconds must be more than 0, got {args.max_request_seconds:g}")
    if not 0 <= args.drain_seconds < float("inf"):
        raise UsageError(f"--drain-seconds must be 0 or more, got {args.drain_seconds:g}")
    if args.job_seconds <= 0:
        raise UsageError(f"--job-seconds must be more than 0, got {args.job_seconds:g}")
    _check_ray_options(args)
    options = service_options(args, served)
    if options.ray is not None:
        from sdcpu.serve import ray_deploy  # UsageError naming the install command when Ray is missing

        return ray_deploy.run(options, cpu, on_listening=_say)
    if args.instances > 1:
        return _run_instances(args, recipe, cpu)
    relaunch.under_plan(recipe, cpu, why=why_auto)  # refuses the recipe step instances=N: --instances is this command's
    sock = _listen(args.host, args.port, args.reuse_port)

    # 2. Serve: the worker thread loads, optimizes and warms up behind /health.
    import uvicorn

    from sdcpu.serve import service
    from sdcpu.serve.queue import Phase

    def stop(error):
        server.should_exit = True

    worker, app = service.build(options, cpu, on_fatal=stop, on_ready=_say)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # SIGTERM, SIGINT: the worker drains while uvicorn stops listening
            worker.drain(args.drain_seconds)
            super().handle_exit(sig, frame)

    # uvicorn waits for the requests in flight; past the drain time they are answered 503, encoded and sent in moments
    server = Server(uvicorn.Config(app, log_level="info" if args.verbose else "warning",
                                   timeout_graceful_shutdown=args.drain_seconds + 10))
    host, port = sock.getsockname()[:2]
    loading = ", ".join(f"{model.spec} (recipe {model.recipe})" for model in options.models)
    print(f"sdcpu serve: listening on http://{host}:{port} (pid {os.getpid()}); loading {loading}"
          + (f"; auto: {why_auto}" if why_auto else ""), flush=True)
    # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully; ignoring it then exits 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run(sockets=[sock])
    if worker.phase is Phase.FAILED:
        raise UsageError(f"cannot serve: {worker.error}")
    return 0


def served_models(args, cpu) -> tuple[tuple[Model, ...], str | None]:
    """The models ARGS serve (--model, then --models-dir's), each parsed, with its warm-up size (the model's own
    unless --warmup-size) and its recipe resolved (auto: a tuned profile for it at that size, else the class rules for
    a long-running process), the default first; and why auto chose the default's."""
    named = args.model or []
    given = named + _models_dir(args.models_dir) if args.models_dir else given_models(args)
    names = [spec if index < len(named) or not args.models_dir else Path(spec).name for index, spec in
             enumerate(given)]
    if len(set(names)) < len(names):
        raise UsageError(f"--model {next(n for n in names if names.count(n) > 1)} is given twice")
    specs = [models.parse_spec(spec, trust_pickle=args.trust_pickle) for spec in given]
    sizes = [generate.parse_size(args.warmup_size or generate.spec_defaults(spec).size) for spec in specs]
    for width, height in sizes:
        generate.Request("warm-up", width=width, height=height).validate()
    resolved = [resolve_recipe(argparse.Namespace(**{**vars(args), "model": model, "recipe": recipe}), cpu, *size,
                               long_running=True, handed=index == 0)
                for index, (model, recipe, size) in enumerate(zip(given, given_recipes(args, len(given)), sizes))]
    _check_one_process(names, [recipe for recipe, _ in resolved])
    return tuple(Model(spec, recipe, size, "" if name == model else name) for spec, (recipe, _), size, name, model
                 in zip(specs, resolved, sizes, names, given)), resolved[0][1]


def service_options(args, served: tuple[Model, ...]) -> Options:
    """The service ARGS ask for, on the SERVED models (served_models'), as the service and Ray take it."""
    ray = None if args.ray is None else Replicas(args.ray, args.replicas, args.min_replicas, args.max_replicas,
                                                 args.cores_per_replica)
    first = served[0]
    return Options(first.spec, first.recipe, name=first.name, more=served[1:], host=args.host, port=args.port,
                   key_digest=key_digest(args.api_key) if args.api_key is not None else None,
                   allowed_hosts=tuple(args.allowed_host), allowed_origins=tuple(args.allow_origin),
                   docs=args.docs,
                   lora_dir=os.path.abspath(args.lora_dir) if args.lora_dir else None, max_queue=args.max_queue,
                   max_uploads=args.max_uploads,
                   max_batch=args.max_batch, max_request_seconds=args.max_request_seconds,
                   drain_seconds=args.drain_seconds, job_seconds=args.job_seconds,
                   jobs=not args.reuse_port and (ray is None or ray.most == 1), max_size=args.max_size,
                   warmup_size=first.warmup_size, verbose=args.verbose, ray=ray, max_memory_gib=args.max_memory)


def _models_dir(folder: str) -> list[str]:
    """The models of FOLDER (serve --models-dir): its diffusers folders and .safetensors files, by name."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UsageError(f"--models-dir {folder}: not a folder")
    found = sorted(str(entry) for entry in path.iterdir()
                   if (entry / "model_index.json").is_file() or entry.suffix.lower() == ".safetensors")
    if not found:
        raise UsageError(f"--models-dir {folder}: no diffusers folder (model_index.json) or .safetensors file in it")
    return found


def _check_one_process(names: list[str], resolved: list) -> None:
    """The models' recipes share one process: their system steps (allocator, OpenMP, threads, pinning) must agree."""
    def plan(recipe):  # threads are bound to cores only where they are pinned
        launch = recipes.launch_options(recipe)
        return dataclasses.replace(launch, bind_threads=launch.pin and launch.bind_threads)

    first = plan(resolved[0])
    for name, recipe in zip(names[1:], resolved[1:]):
        if plan(recipe) != first:
            raise UsageError(f"--recipe: {name}'s recipe {recipe} and {names[0]}'s {resolved[0]} have other system "
                             "steps (allocator, OpenMP, threads, pinning): the models share one process, so give "
                             "them the same ones")


def _say(message: str) -> None:
    print(message, flush=True)


def _check_ray_options(args) -> None:
    """The Ray Serve options: only with --ray, in bounds, and not mixed with --instances or a port picked at random
    (every node's proxy listens on the same one)."""
    given = [name for name in ("replicas", "min_replicas", "max_replicas", "cores_per_replica")
             if getattr(args, name) is not None]
    if args.ray is None:
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} needs --ray")
        return
    for name in given:
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.replicas is not None and (args.min_replicas is not None or args.max_replicas is not None):
        raise UsageError("--replicas is a fixed count: give it, or --min-replicas/--max-replicas, not both")
    if args.min_replicas is not None and args.max_replicas is None:
        raise UsageError("--min-replicas needs --max-replicas (the autoscaler's upper bound)")
    if args.max_replicas is not None and args.max_replicas < (args.min_replicas or 1):
        raise UsageError(f"--max-replicas {args.max_replicas} is below --min-replicas {args.min_replicas}")
    if args.instances > 1:
        raise UsageError("--instances starts copies on this machine; with --ray, give --replicas")
    if args.port == 0:
        raise UsageError("--ray needs a fixed --port: Ray Serve's proxy listens on it on every node")


def _check_access(host: str, api_key: str | None, insecure_no_key: bool) -> None:
    """Refuse an empty key (it would turn auth off unseen), one a client cannot send as it is (anything but printable
    ASCII without spaces: an HTTP client encodes other characters its own way, so it would never match) and a bind
    beyond loopback without a key, unless asked."""
    if api_key == "":
        raise UsageError("the API key is empty (--api-key or $SDCPU_API_KEY): give a key, or leave both unset")
    if api_key is not None and not all("!" <= char <= "~" for char in api_key):
        raise UsageError("the API key (--api-key or $SDCPU_API_KEY) must be printable ASCII without spaces: a client "
                         "cannot send other characters as they are")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any address
        loopback = False
    if not loopback and api_key is None and not insecure_no_key:
        raise UsageError(f"--host {host} is reachable from other machines and no API key is set: pass --api-key KEY "
                         "(or $SDCPU_API_KEY), or --insecure-no-key to serve anyone who reaches it")


def _origin(given: str) -> str:
    """GIVEN (an --allow-origin) as a browser sends it in its Origin header: scheme://host[:port], lowercase, without
    its scheme's default port (a browser sends https://example.com, never https://example.com:443)."""
    if not (match := ORIGIN.fullmatch(given.lower())):
        raise argparse.ArgumentTypeError(f"{given!r} is not an origin: give scheme://host[:port], as "
                                         "http://localhost:3000 (no path, no wildcard)")
    origin = match.group(1)
    default = {"http": ":80", "https": ":443"}[origin.split(":", 1)[0]]
    return origin.removesuffix(default)


def _run_instances(args, recipe, cpu) -> int:
    """N copies of this command, each under its launch plan (the recipe's system steps, pinned to its share of the
    cores), all listening on the same port; signals reach every copy, so SIGTERM drains them all."""
    if args.port == 0:
        raise UsageError("--instances needs a fixed --port: the instances share it")
    options = dataclasses.replace(recipes.launch_options(recipe), instances=args.instances, pin=True)
    plans = relaunch.instance_plans(options, cpu)
    _listen(args.host, args.port).close()  # a taken port fails here, once, not in every copy
    copy = [sys.executable, "-P", "-m", "sdcpu", *sys.argv[1:], "--instances", "1", "--reuse-port"]  # the last value wins
    for index, plan in enumerate(plans):
        print(f"sdcpu serve: instance {index}: {launcher.shell_line(plan, ['sdcpu', 'serve', '...'])}", flush=True)
    return run_instances(plans, copy, {**os.environ, relaunch.MARK: "1"})


def _listen(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, reuse_port=reuse_port)
    except OSError as err:
        raise UsageError(f"cannot listen on {host}:{port}: {err.strerror}") from None

