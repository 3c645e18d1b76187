"""`sdcpu batch` in one process, in two processes of one core each (no Ray), and on Ray Data, one configuration after
the other on the same jobs: images/min over the whole command (model load, compile and Ray's start included) and in
the steady state (from the first PNGs written to the last: (images - pipelines) / that time, each pipeline's first
image being the start of its steady state). Ray's cost per image is the Ray configuration's s/image in its pipeline
calls against the same cores per pipeline without Ray.

    python benchmarks/batch_scale.py --model random:sd15 --size 256x256 --steps 4 --prompts 16

Run it on a quiet machine (nothing else running); the PNGs go to a temporary folder, removed after.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# name: the processes run at once, each (its extra arguments, the CPUs it is started on or None); the jobs are
# shared out among them
CONFIGS = {
    "single process (1 x 2 cores)": [([], None)],
    "2 processes x 1 core, no Ray": [([], "0"), ([], "1")],  # each sees one usable core: one thread, as an actor
    "Ray Data, 2 actors x 1 core": [(["--ray", "--actors", "2", "--cores-per-actor", "1"], None)],
    "Ray Data, 1 actor x 2 cores": [(["--ray", "--actors", "1", "--cores-per-actor", "2"], None)],
}


def command(extra: list[str], cpus: str | None, jobs: Path, out: Path, args) -> list[str]:
    line = [sys.executable, "-P", "-m", "sdcpu", "batch", str(jobs), "--out", str(out), "--model", args.model,
            "--recipe", args.recipe, "--size", args.size, "--steps", str(args.steps), *extra]
    return (["taskset", "-c", cpus] if cpus else []) + line


def run(index: int, name: str, processes: list, args, folder: Path) -> dict:
    prompts = [f"a sailing ship in storm by Rembrandt, study {i}\n" for i in range(args.prompts)]
    started, outs = [], []
    start = time.time()
    for n, (extra, cpus) in enumerate(processes):
        jobs, out = folder / f"jobs-{index}-{n}.txt", folder / f"out-{index}-{n}"
        jobs.write_text("".join(prompts[n::len(processes)]))
        outs.append(out)
        started.append(subprocess.Popen(command(extra, cpus, jobs, out, args), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
    for process in started:
        _, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"{name}: exit {process.returncode}\n{err[-3000:]}")
    wall = time.time() - start
    pipelines = 2 if "2 actors" in name or len(processes) == 2 else 1  # working at once
    times = sorted(path.stat().st_mtime for out in outs for path in out.glob("*.png"))
    rows = [json.loads(line) for out in outs for line in (out / "manifest.jsonl").read_text().splitlines()]
    steady = (len(times) - pipelines) / (times[-1] - times[pipelines - 1]) * 60 if len(times) > pipelines else 0.0
    return {"config": name, "images": len(times), "rows": len(rows), "wall_s": round(wall, 1),
            "images_per_min_wall": round(len(times) / wall * 60, 2), "images_per_min_steady": round(steady, 2),
            "first_image_s": round(times[0] - start, 1),
            "s_per_image_in_pipeline": round(sorted(r["seconds"] for r in rows)[len(rows) // 2], 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:sd15")
    parser.add_argument("--recipe", default="auto")
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--only", action="append", help="run only the configs whose name contains this")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        for index, (name, processes) in enumerate(CONFIGS.items()):
            if args.only and not any(part in name for part in args.only):
                continue
            results.append(run(index, name, processes, args, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
    print(f"\n{args.model} {args.size}, {args.steps} steps, {args.prompts} prompts, recipe {args.recipe}\n")
    print("| configuration | images/min (steady) | images/min (whole command) | first image | wall | s/image in call |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['config']} | {r['images_per_min_steady']} | {r['images_per_min_wall']} | {r['first_image_s']} s "
              f"| {r['wall_s']} s | {r['s_per_image_in_pipeline']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
