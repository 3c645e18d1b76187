"""The service `sdcpu serve` runs, put together in one place: a Worker (serve/queue.py) owning the pipelines of the
models served (serve/served.py), each prepared (loaded, optimized and warmed up) on its thread, and the app around it
(serve/app.py). `sdcpu serve` runs it under
uvicorn; each Ray Serve replica (serve/ray_deploy.py) builds the same; `sdcpu mcp` (serve/mcp_tools.py) the service
alone."""

import functools

from sdcpu.pipeline import generate
from sdcpu.pipeline.prepare import prepare
from sdcpu.serve import preview, served
from sdcpu.serve.app import create_app, Service, Settings
from sdcpu.serve.metrics import Metrics
from sdcpu.serve.options import MEMORY_SHARE, Model, Options
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
    return Settings(max_size=options.max_size, key_digest=options.key_digest, lora_dir=options.lora_dir,
                    hosts=(options.host, *options.allowed_hosts), docs=options.docs,
                    origins=options.allowed_origins, max_uploads=options.max_uploads, jobs=options.jobs,
                    job_seconds=options.job_seconds)


def _worker(options: Options, cpu, on_fatal, on_ready) -> Worker:
    models = [served.Model(model.name or str(model.spec), str(model.recipe), model.spec.random_weights,
                           functools.partial(_prepare, model=model, cpu=cpu, on_ready=on_ready))
              for model in options.models]
    budget = options.max_memory_gib or MEMORY_SHARE * cpu.memory_bytes / served.GIB
    return Worker(served.Models(models, budget), max_queue=options.max_queue, max_batch=options.max_batch,
                  max_seconds=options.max_request_seconds, on_fatal=on_fatal)


def _prepare(worker, again: bool, *, model: Model, cpu, on_ready):
    """MODEL's pipeline, prepared on the worker's thread (compiling steps compile on the warm-up call), each phase
    said in its state. The first time a warm-up call is made whatever the recipe (the first request pays no first
    call's costs, and a model that cannot run fails before the server is ready); AGAIN, only where a step compiles:
    a released eager model's warm-up would only delay the request waiting for it."""
    width, height = model.warmup_size
    prepared = prepare(model.spec, model.recipe, cpu, always_warm=not again,
                       warmup=lambda defaults: generate.Request("warm-up", steps=1, width=width, height=height),
                       on_phase=lambda phase: setattr(worker, "state", phase))
    previews = preview.previewer(prepared.pipe).source  # loaded now: the first preview or progress image pays nothing
    skipped = "; ".join(map(str, prepared.skipped))
    warmup = f"warm-up {prepared.warmup.seconds:.1f} s" if prepared.warmup else "no warm-up"
    on_ready(f"sdcpu serve: {model.spec} ready (load {prepared.load_seconds:.1f} s, {warmup}; previews: {previews})"
             + (f"; skipped: {skipped}" if skipped else ""))
    return prepared.pipe
