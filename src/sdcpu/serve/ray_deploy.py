"""`sdcpu serve --ray [ADDRESS]`: the service of `sdcpu serve` as a Ray Serve application. Every replica builds the
same app with `sdcpu.serve.service.build` (its Worker, both APIs, the page, the API key, Host and cross-site guard,
the body limits, /health, /metrics); Ray runs its lifespan (worker.start, then worker.close when the replica stops).

This process (the driver) starts a Ray on this machine (`--ray` alone, num_cpus its usable physical cores) or joins
the cluster at ADDRESS, starts Ray Serve's HTTP proxy on --host:--port (on every node with a replica), deploys the
replicas and waits: SIGTERM or Ctrl-C deletes the application (Ray stops routing to each replica, waits for its
requests in flight, then its lifespan lets the Worker finish what it queued), `serve shutdown` on the cluster ends
it too; either way it exits 0.

On each node, a replica is an actor asking Ray for num_cpus = --cores-per-replica. It pins itself (every thread of
its process) to a free share of the node's usable physical cores (sdcpu.system.ray_shares: as `serve --instances` splits
them), sets torch's threads to that share, then loads, optimizes and warms up
its pipeline on its worker thread behind /health. The recipe is the one resolved here; its system steps (allocator,
OpenMP runtime) are not applied in a replica: Ray starts the worker processes, not sdcpu.

Back-pressure: when every replica has max_ongoing_requests in flight, Ray's router queues up to max_queued_requests
and then answers its own 503 (plain text, not sdcpu's JSON error). So a replica admits more requests than its Worker
holds (max_batch running + --max-queue waiting) plus HEADROOM for the light routes: a replica's Worker fills first and
answers sdcpu's 503 JSON error with Retry-After itself, as the single-process server does. Ray's queue only fills
under a flood of light requests; its 503 then carries a Retry-After too.
"""

import logging
import os
import signal
import threading

from sdcpu.errors import UsageError

try:
    import ray
    from ray import serve
    from ray.serve.exceptions import BackPressureError
except ImportError as error:
    raise UsageError(f"--ray needs Ray Serve ({error}): pip install -e '.[ray]'") from None

from sdcpu.serve import service
from sdcpu.serve.options import Options
from sdcpu.serve.queue import Phase
from sdcpu.system import hardware, ray_shares

log = logging.getLogger(__name__)
APP = "sdcpu"  # the Ray Serve application's name
HEADROOM = 8  # requests a replica admits beyond its Worker's: /health, /metrics, the page, /sdapi/v1/progress


@serve.ingress()
class Replica:
    """One replica: its share of the node's cores, one warm pipeline, the app of `sdcpu serve`."""

    def __init__(self, options: Options, cores: int):
        cpu = hardware.detect()
        self.share = ray_shares.claim(cpu, cores)
        if self.share:  # None where every share is taken: that replica runs unpinned
            ray_shares.pin(self.share[1])
            log.info("replica pinned to CPUs %s", hardware.format_cpu_list(self.share[1]))
        self.worker, self.asgi = service.build(options, cpu, on_fatal=lambda _: None, on_ready=log.info)

    def __serve_build_asgi_app__(self):
        return self.asgi

    def failure(self) -> str | None:
        """Why this replica's model could not be prepared (the driver stops the service, as `sdcpu serve` exits);
        None while it loads or serves."""
        return str(self.worker.error) if self.worker.phase is Phase.FAILED else None


def deployment_options(options: Options, usable_cores: int) -> dict:
    """The Ray Serve deployment options of OPTIONS: replicas or autoscaling bounds, each replica's cores, the
    limits."""
    ray = options.ray
    cores = ray.cores or max(1, usable_cores // ray.most)
    admitted = options.max_batch + options.max_queue + HEADROOM
    scaling = ({"autoscaling_config": {"min_replicas": ray.min_replicas or 1, "max_replicas": ray.max_replicas,
                                       "target_ongoing_requests": options.max_batch}}  # one more while requests wait
               if ray.max_replicas else {"num_replicas": ray.replicas or 1})
    return {**scaling, "ray_actor_options": {"num_cpus": cores}, "max_ongoing_requests": admitted,
            "max_queued_requests": admitted, "backpressure_config": {"retry_after_s": 1},
            "graceful_shutdown_timeout_s": options.drain_seconds, "logging_config": _logging(options)}


def _logging(options: Options) -> dict:
    """Ray Serve's logging for the replicas, the proxies and the controller: warnings, no access log (-v: info)."""
    return {"log_level": "INFO" if options.verbose else "WARNING", "enable_access_log": False}


def run(options: Options, cpu, on_listening) -> int:
    """Deploy the replicas, tell ON_LISTENING(message) where they listen, wait for SIGTERM/SIGINT or `serve
    shutdown`; 0 once drained."""
    spec, recipe, address = options.spec, options.recipe, options.ray.address
    deployment = deployment_options(options, len(cpu.usable_physical_cores))
    cores, most = deployment["ray_actor_options"]["num_cpus"], options.ray.most
    local = address == ray_shares.LOCAL
    if local and cores * most > len(cpu.usable_physical_cores):
        raise UsageError(f"{most} replicas x {cores} cores need {cores * most} physical cores; this machine has "
                         f"{len(cpu.usable_physical_cores)} usable (give --cores-per-replica or fewer replicas)")
    try:
        ray.init(address=address, num_cpus=len(cpu.usable_physical_cores) if local else None,
                 include_dashboard=False, logging_level=logging.INFO if options.verbose else logging.WARNING)
    except (ConnectionError, ValueError) as error:
        raise UsageError(f"--ray {address}: {error} (a cluster with token authentication also needs "
                         "RAY_AUTH_MODE=token and its token here)") from None
    stopping = threading.Event()  # set here, after ray.init: it sets its own SIGTERM handler (sys.exit)
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        logging.getLogger("ray.serve").setLevel(logging.INFO if options.verbose else logging.WARNING)
        serve.start(http_options={"host": options.host, "port": options.port}, logging_config=_logging(options))
        app = serve.deployment(Replica, name="sdcpu-replica", **deployment).bind(options, cores)
        try:
            serve.run(app, name=APP, route_prefix="/")
        except RuntimeError as error:  # a replica that cannot start, its traceback in the log above
            raise UsageError(f"cannot serve {spec} on Ray: {error}") from None
        scaling = f"{options.ray.min_replicas or 1}..{most}" if options.ray.max_replicas else str(most)
        on_listening(f"sdcpu serve: listening on http://{options.host}:{options.port} (pid {os.getpid()}, Ray Serve "
                     f"{'on this machine' if local else f'cluster {address}'}); {scaling} replicas x {cores} cores; "
                     f"loading {spec}, recipe {recipe}")
        replicas = serve.get_app_handle(APP)
        while not stopping.wait(1.0):
            if APP not in serve.status().applications:  # `serve shutdown` or `serve delete` on the cluster
                return 0
            try:
                failure = replicas.failure.remote().result(timeout_s=30)  # one replica's, each time another
            except (BackPressureError, TimeoutError):  # every replica busy: asked again next time
                continue
            if failure:
                raise UsageError(f"cannot serve {spec}: {failure}")
        return 0
    finally:
        if APP in serve.status().applications:
            serve.delete(APP)  # each replica drains: its requests in flight, then its Worker's queue
        ray.shutdown()  # a Ray started here stops with it (its Serve too); a cluster keeps running
        for sig, handler in previous.items():
            signal.signal(sig, handler)
