"""The service `sdcpu serve` runs, put together in one place: a Worker (serve/queue.py) owning one pipeline, loaded,
optimized and warmed up on its thread, and the app around it (serve/app.py). `sdcpu serve` runs it under uvicorn;
each Ray Serve replica (serve/ray_deploy.py) builds the same."""

import os

from sdcpu import generate, models, steps
from sdcpu.serve import preview
from sdcpu.serve.app import Settings, create_app
from sdcpu.serve.queue import Worker


def build(args, spec, recipe, cpu, on_fatal):
    """(worker, app): the service ARGS ask for, on one pipeline of SPEC optimized with RECIPE for CPU, its worker
    started by the app's lifespan; ON_FATAL(error) is told when the model cannot be prepared."""
    size = generate.parse_size(args.warmup_size)
    settings = Settings(model=str(spec), recipe=str(recipe), random_weights=spec.random_weights,
                        max_size=args.max_size, api_key=args.api_key,
                        lora_dir=os.path.abspath(args.lora_dir) if args.lora_dir else None,
                        hosts=(args.host, *args.allowed_host), docs=args.docs)
    worker = Worker(lambda w: prepare(w, spec, recipe, cpu, size), max_queue=args.max_queue,
                    max_batch=args.max_batch, max_seconds=args.max_request_seconds, on_fatal=on_fatal)
    return worker, create_app(worker, settings)


def prepare(worker, spec, recipe, cpu, size):
    """Load, optimize, warm up (compiling steps compile on this call): the pipeline the worker will own."""
    worker.state = f"loading {spec}"
    pipe = models.load_pipeline(spec)
    worker.state = f"optimizing with {recipe}"
    _, outcomes = steps.optimize(pipe, recipe, cpu)
    worker.state = f"warming up: one 1-step call at {size[0]}x{size[1]}"
    warmup = generate.run(pipe, generate.Request("warm-up", steps=1, width=size[0], height=size[1]))
    previews = preview.previewer(pipe).source  # loaded now: the first streamed preview or progress image pays nothing
    skipped = "; ".join(str(outcome) for outcome in outcomes if not outcome.applied)
    print(f"sdcpu serve: ready (warm-up {warmup.seconds:.1f} s; previews: {previews})"
          + (f"; skipped: {skipped}" if skipped else ""), flush=True)
    return pipe
