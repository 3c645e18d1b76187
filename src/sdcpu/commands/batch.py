"""`sdcpu batch JOBS --out DIR`: every job of a .jsonl, .csv or .txt file, one self-describing PNG per image and a
manifest row as each is written; rerun with the same arguments, it makes only what is missing."""

import sys
import time
from collections import Counter
from pathlib import Path

from sdcpu import batch, models, recipes
from sdcpu.batch import make, on_ray
from sdcpu.commands.options import add_model, add_recipe, finite, resolve_recipe
from sdcpu.errors import UsageError
from sdcpu.models import schedulers
from sdcpu.pipeline import generate
from sdcpu.pipeline.generate import DEFAULTS
from sdcpu.recipes import relaunch
from sdcpu.system import hardware, ray_shares


def register(sub):
    p = sub.add_parser("batch", help="generate the images of a jobs file, resumably", description=__doc__)
    p.add_argument("jobs", metavar="JOBS", help="a .jsonl (one object a line: prompt, negative_prompt, seed, "
                                               "size, steps, guidance, scheduler, n), a .csv with those columns, "
                                               "or a .txt (one prompt a line)")
    p.add_argument("--out", required=True, metavar="DIR", help="the images, manifest.jsonl and batch.json")
    add_model(p)
    add_recipe(p)
    p.add_argument("--size", help=f"WIDTHxHEIGHT of jobs that set none (default: the model's where known before it "
                                  f"loads, a random:ARCH's or a diffusers folder's; else {DEFAULTS.size})")
    p.add_argument("--steps", type=int,
                   help=f"steps of jobs that set none (default: the recipe's, else {DEFAULTS.steps})")
    p.add_argument("--seed", type=int, default=0, help="seed of jobs that set none (default %(default)s)")
    p.add_argument("--guidance", type=finite,
                   help=f"guidance of jobs that set none (default: the recipe's, else {DEFAULTS.guidance})")
    p.add_argument("--negative-prompt", default="", help="negative prompt of jobs that set none")
    p.add_argument("--num-images", type=int, default=1, help="images of jobs that set no n (default %(default)s)")
    p.add_argument("--scheduler", choices=list(schedulers.SCHEDULERS), metavar="NAME",
                   help="scheduler of jobs that set none (default: the model's own)")
    p.add_argument("--max-batch", type=int, default=1,
                   help="images of the same size, steps, guidance and scheduler per pipeline call (default 1)")
    p.add_argument("--strict", action="store_true", help="refuse the whole file if any row is bad (exit 2)")
    p.add_argument("--trust-pickle", action="store_true", help="allow pickle checkpoints (they can run code)")
    p.add_argument("--ray", nargs="?", const=ray_shares.LOCAL, metavar="ADDRESS",
                   help="run on Ray Data: alone, a Ray started on this machine; ADDRESS (HOST:PORT): a running "
                        "cluster's head (needs pip install -e '.[ray]')")
    p.add_argument("--actors", type=int, help="with --ray: actors, each with one pipeline (default: the cluster's "
                                              "CPUs / --cores-per-actor)")
    p.add_argument("--cores-per-actor", type=int, help="with --ray: physical cores (and threads) of each actor "
                                                       "(default 1)")
    p.set_defaults(func=run)


OPTIONS = ("model", "recipe", "quality", "size", "steps", "seed", "guidance", "negative_prompt", "num_images",
           "scheduler")  # what batch.json ties a folder to: all that changes an image (--max-batch, --ray: rounding)


def run(args) -> int:
    # 1. Read and check every row and the folder before the (slow) model load; then start under the recipe's plan.
    cpu = hardware.detect()
    if args.max_batch < 1:
        raise UsageError(f"--max-batch must be at least 1, got {args.max_batch}")
    ray_options = on_ray.check(args.ray, args.actors, args.cores_per_actor)
    spec = models.parse_spec(args.model, trust_pickle=args.trust_pickle)
    size = args.size or generate.spec_defaults(spec).size
    defaults = batch.Job(line=0, prompt="x", negative_prompt=args.negative_prompt, seed=args.seed, size=size,
                         steps=args.steps, guidance=args.guidance, scheduler=args.scheduler,
                         n=args.num_images).validate()
    path, folder = Path(args.jobs), Path(args.out)
    jobs, bad, digest = batch.read_jobs(path, defaults)
    if bad and args.strict:
        _report(path, bad)
        return 2
    if not jobs:
        raise UsageError(f"{path}: no job to run")
    width, height = generate.parse_size(Counter(job.size for job in jobs).most_common(1)[0][0])
    recipe, why_auto = resolve_recipe(args, cpu, width, height)
    recipes.unbatchable(recipe, args.max_batch)
    batch.check_state(folder, digest, {name: getattr(args, name) for name in OPTIONS})  # writes batch.json
    if ray_options is None:  # on Ray the actors compute, each started under its share of the plan
        relaunch.under_plan(recipe, cpu, why=why_auto)
    _report(path, bad)  # after the re-exec, so said once

    # 2. What is left (the folder locked first): the manifest's "ok" rows whose file exists are done; a killed run's
    # staging of this batch's images goes.
    with batch.open_manifest(folder / batch.MANIFEST) as manifest:
        batch.remove_staging(folder, [(job, seed) for job in jobs for seed in job.seeds()])
        rows = batch.read_manifest(folder / batch.MANIFEST)
        images = batch.todo(jobs, rows, folder)
        total = sum(job.n for job in jobs)
        for row in bad:
            if row.line not in batch.reported(rows):
                batch.append(manifest, batch.row(row.line, None, recipe, error=row.error))
        failed = 0
        if images:
            made = (_made_on_ray(ray_options, spec, recipe, cpu, images, folder, args.max_batch) if ray_options
                    else _made_here(args, spec, recipe, cpu, images, folder))
            failed = _record(made, manifest, total, len(images))
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


def _made_here(args, spec, recipe, cpu, images, folder):
    """The rows of IMAGES made in this process, each as its PNG is written (the model loaded first)."""
    maker = make.Maker(spec, recipe, cpu, folder, images[0], progress=True)
    if maker.warmup_seconds is not None:
        print(f"compile + one-step warm-up: {maker.warmup_seconds:.1f} s (one-time)")
    return maker.rows(images, args.max_batch)


def _made_on_ray(options, spec, recipe, cpu, images, folder, max_batch: int):
    """The rows of IMAGES made by a pool of Ray actors, each as its PNG is written (the pool started first)."""
    pool = on_ray.start(options, cpu)
    print(f"sdcpu batch: {pool}", flush=True)
    return on_ray.rows(pool, spec, recipe, cpu, images, folder, max_batch)


def _record(rows, manifest, total: int, left: int) -> int:
    """Append each of ROWS to the manifest as it comes, once per (line, seed) (a batch Ray retried after its actor
    died may bring an image again), with a progress bar of the TOTAL images, LEFT of them to make; the number that
    failed."""
    from tqdm import tqdm

    seen, failed, start = set(), 0, time.perf_counter()
    with tqdm(total=total, initial=total - left, unit="image", dynamic_ncols=True) as bar:
        for row in rows:
            if (row["line"], row["seed"]) in seen:
                continue
            seen.add((row["line"], row["seed"]))
            batch.append(manifest, row)
            failed += row["status"] == "error"
            bar.update(1)
            bar.set_postfix_str(f"{(bar.n - bar.initial) / (time.perf_counter() - start) * 60:.1f} images/min")
    return failed
