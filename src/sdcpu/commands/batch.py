"""`sdcpu batch JOBS --out DIR`: every job of a .jsonl, .csv or .txt file, one self-describing PNG per image and a
manifest row as each is written; rerun with the same arguments, it makes only what is missing."""

import dataclasses
import sys
import time
from collections import Counter
from pathlib import Path

from sdcpu import auto, batch, generate, hardware, models, recipes, relaunch, schedulers, steps, steps_base
from sdcpu.commands.options import add_model
from sdcpu.errors import UsageError


def register(sub):
    p = sub.add_parser("batch", help="generate the images of a jobs file, resumably", description=__doc__)
    p.add_argument("jobs", metavar="JOBS", help="a .jsonl (one object a line: prompt, negative_prompt, seed, "
                                               "size, steps, guidance, scheduler, n), a .csv with those columns, "
                                               "or a .txt (one prompt a line)")
    p.add_argument("--out", required=True, metavar="DIR", help="the images, manifest.jsonl and batch.json")
    add_model(p)
    p.add_argument("--recipe", default="auto", help="as for `sdcpu generate` (default %(default)s)")
    p.add_argument("--quality", choices=auto.QUALITIES, help="the auto recipe's quality level")
    p.add_argument("--size", default="512x512", help="WIDTHxHEIGHT of jobs that set none (default %(default)s)")
    p.add_argument("--steps", type=int, help="steps of jobs that set none (default: the recipe's, else 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of jobs that set none (default %(default)s)")
    p.add_argument("--guidance", type=float, help="guidance of jobs that set none (default: the recipe's, else 7.5)")
    p.add_argument("--negative-prompt", default="", help="negative prompt of jobs that set none")
    p.add_argument("--num-images", type=int, default=1, help="images of jobs that set no n (default %(default)s)")
    p.add_argument("--scheduler", choices=list(schedulers.SCHEDULERS), metavar="NAME",
                   help="scheduler of jobs that set none (default: the model's own)")
    p.add_argument("--max-batch", type=int, default=1,
                   help="images of the same size, steps, guidance and scheduler per pipeline call (default 1)")
    p.add_argument("--strict", action="store_true", help="refuse the whole file if any row is bad (exit 2)")
    p.add_argument("--trust-pickle", action="store_true", help="allow pickle checkpoints (they can run code)")
    p.set_defaults(func=run)


OPTIONS = ("model", "recipe", "quality", "size", "steps", "seed", "guidance", "negative_prompt", "num_images",
           "scheduler")  # what batch.json ties a folder to: all that changes an image (--max-batch only its rounding)


def run(args) -> int:
    # 1. Read and check every row and the folder before the (slow) model load; then start under the recipe's plan.
    cpu = hardware.detect()
    if args.quality and not recipes.is_auto(args.recipe):
        raise UsageError(f"--quality sets the level of the auto recipe, not of --recipe {args.recipe}")
    if args.max_batch < 1:
        raise UsageError(f"--max-batch must be at least 1, got {args.max_batch}")
    defaults = batch.Job(line=0, prompt="x", negative_prompt=args.negative_prompt, seed=args.seed, size=args.size,
                         steps=args.steps, guidance=args.guidance, scheduler=args.scheduler,
                         n=args.num_images).validate()
    spec = models.parse_spec(args.model, trust_pickle=args.trust_pickle)
    path, folder = Path(args.jobs), Path(args.out)
    jobs, bad, digest = batch.read_jobs(path, defaults)
    if bad and args.strict:
        _report(path, bad)
        return 2
    if not jobs:
        raise UsageError(f"{path}: no job to run")
    batch.check_state(folder, digest, {name: getattr(args, name) for name in OPTIONS})
    width, height = generate.parse_size(Counter(job.size for job in jobs).most_common(1)[0][0])
    recipe, why_auto = relaunch.handed_down() or auto.resolve_for(
        f"auto:{args.quality}" if args.quality else args.recipe, cpu, args.model, width, height)
    relaunch.under_plan(recipe, cpu, why=why_auto)
    _report(path, bad)  # after the re-exec, so said once

    # 2. What is left (the folder locked first): the manifest's "ok" rows whose file exists are done; a killed run's
    # temporary files go.
    with batch.open_manifest(folder / batch.MANIFEST) as manifest:
        batch.remove_parts(folder)
        rows = batch.read_manifest(folder / batch.MANIFEST)
        images = batch.todo(jobs, rows, folder)
        total = sum(job.n for job in jobs)
        for row in bad:
            if row.line not in batch.reported(rows):
                batch.append(manifest, {"line": row.line, "seed": None, "file": None, "seconds": None,
                                        "recipe": str(recipe), "status": "error", "error": row.error})
        failed = _make(args, spec, recipe, cpu, images, total, folder, manifest) if images else 0
    print(f"{folder}: {len(images) - failed} image(s) made, {failed} failed, {total - len(images)} already there"
          + (f", {len(bad)} bad row(s)" if bad else "") + f"; recipe {recipe.name}: {recipe}")
    if why_auto:
        print(f"auto: {why_auto}")
    if spec.random_weights:
        print(f"note: {generate.RANDOM_WEIGHTS_NOTE}")
    return 1 if failed or bad else 0


def _report(path, bad) -> None:
    for row in bad:
        print(f"sdcpu batch: {path}:{row.line}: {row.error}", file=sys.stderr)


def _make(args, spec, recipe, cpu, images, total, folder, manifest) -> int:
    """Make IMAGES (job, seed), a manifest row as each is written; the number that failed."""
    from tqdm import tqdm

    # 3. Load the model, optimize it; a compiling backend compiles on a one-step warm-up.
    pipe = models.load_pipeline(spec, progress=True)
    _, outcomes = steps.optimize(pipe, recipe, cpu)
    pipe.set_progress_bar_config(disable=True)  # one bar: images, not each call's steps
    call_defaults = steps_base.defaults(pipe)
    use_scheduler = schedulers.Swapper(pipe).use  # each made once from the recipe's own

    first_job, first_seed = images[0]
    if any(o.applied and recipes.kind(o.step).compiles for o in outcomes):
        use_scheduler(first_job.scheduler)
        warmup = generate.run(pipe, dataclasses.replace(first_job.request(first_seed, call_defaults), steps=1))
        print(f"compile + one-step warm-up: {warmup.seconds:.1f} s (one-time)")

    # 4. One pipeline call per group of images of one shape; each image written, then its manifest row.
    def shape(job):
        request = job.request(job.seed, call_defaults)
        return request.width, request.height, request.steps, request.guidance, job.scheduler

    failed, start = 0, time.perf_counter()
    with tqdm(total=total, initial=total - len(images), unit="image", dynamic_ncols=True) as bar:
        for group in batch.groups(images, args.max_batch, shape):
            requests = [job.request(seed, call_defaults) for job, seed in group]
            try:
                scheduler = use_scheduler(group[0][0].scheduler)
                result = generate.run_batch(pipe, requests)
            except Exception as err:  # one failed call is reported in the manifest; the rest of the batch runs
                failed += len(group)
                for job, seed in group:
                    batch.append(manifest, {"line": job.line, "seed": seed, "file": None, "seconds": None,
                                            "recipe": str(recipe), "status": "error",
                                            "error": f"{type(err).__name__}: {err}"})
                bar.update(len(group))
                continue
            for (job, seed), request, image in zip(group, requests, result.images):
                name = batch.image_name(job.line, seed)
                text = generate.parameters_text(request, seed, model=str(spec), random_weights=spec.random_weights,
                                                scheduler=scheduler, recipe=str(recipe))
                generate.save_png(image, folder / name, text)
                batch.append(manifest, {"line": job.line, "seed": seed, "file": name,
                                        "seconds": round(result.seconds_per_image(), 3), "recipe": str(recipe),
                                        "status": "ok", "error": None})
                bar.update(1)
                made = bar.n - bar.initial
                bar.set_postfix_str(f"{made / (time.perf_counter() - start) * 60:.1f} images/min")
    return failed
