"""The service `sdcpu serve` runs, put together in one place: a Worker (serve/queue.py) owning one pipeline, prepared
(loaded, optimized and warmed up) on its thread, and the app around it (serve/app.py). `sdcpu serve` runs it under
uvicorn; each Ray Serve replica (serve/ray_deploy.py) builds the same; `sdcpu mcp` (serve/mcp_tools.py) the service
alone."""

from sdcpu.pipeline import generate
from sdcpu.pipeline.prepare import prepare
from sdcpu.serve import preview
from sdcpu.serve.app import create_app, Service, Settings
from sdcpu.serve.metrics import Metrics
from sdcpu.serve.options import Options
from sdcpu.serve.queue import Worker


def build(options: Options, cpu, on_fatal, on_ready=lambda message: None):
    """(worker, app): the service OPTIONS ask for, its pipeline optimized for CPU, its worker started by the app's
    lifespan; ON_FATAL(error) is told when the model cannot be prepared, ON_READY(message) once it is ready."""
    worker = _worker(options, cpu, on_fatal, on_ready)
    return worker, create_app(worker, _settings(options))


def standalone(options: Options, cpu, on_ready=lambda message: None) -> Service:
    """The same service without HTTP (`sdcpu mcp`): its worker not started yet; a failed preparation is its state."""
    worker = _worker(options, cpu, lambda error: None, on_ready)
    return Service(worker, _settings(options), Metrics(worker.depth))


def _settings(options: Options) -> Settings:
    spec = options.spec
    return Settings(model=str(spec), recipe=str(options.recipe), random_weights=spec.random_weights,
                    max_size=options.max_size, key_digest=options.key_digest, lora_dir=options.lora_dir,
                    hosts=(options.host, *options.allowed_hosts), docs=options.docs,
                    origins=options.allowed_origins, max_uploads=options.max_uploads, jobs=options.jobs,
                    job_seconds=options.job_seconds)


def _worker(options: Options, cpu, on_fatal, on_ready) -> Worker:
    return Worker(lambda w: _prepare(w, options, cpu, on_ready), max_queue=options.max_queue,
                  max_batch=options.max_batch, max_seconds=options.max_request_seconds, on_fatal=on_fatal)


def _prepare(worker, options: Options, cpu, on_ready):
    """The pipeline the worker will own, prepared on its thread (compiling steps compile on the warm-up call), each
    phase said in its state."""
    width, height = options.warmup_size
    prepared = prepare(options.spec, options.recipe, cpu, always_warm=True,
                       warmup=lambda defaults: generate.Request("warm-up", steps=1, width=width, height=height),
                       on_phase=lambda phase: setattr(worker, "state", phase))
    previews = preview.previewer(prepared.pipe).source  # loaded now: the first preview or progress image pays nothing
    skipped = "; ".join(map(str, prepared.skipped))
    on_ready(f"sdcpu serve: ready (warm-up {prepared.warmup.seconds:.1f} s; previews: {previews})"
             + (f"; skipped: {skipped}" if skipped else ""))
    return prepared.pipe
