"""`sdcpu bench`'s measuring half: each rung in a fresh process under its own launch plan, one JSON row each.

Rows are appended to OUT/results.jsonl as each rung ends, so nothing measured is lost if a later rung fails or the run
is interrupted. A rung that fails is recorded with its reason, and the ladder goes on. Fidelity is computed here:
PSNR and SSIM of each rung's image against the first rung's image (the same seed).
"""

import datetime
import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

from sdcpu.bench import child, fidelity, inputs, ladders, peers
from sdcpu.pipeline import optimizer
from sdcpu.recipes import auto, profiles, relaunch
from sdcpu.system import children, hardware
from sdcpu.system.versions import versions

RESULTS = "results.jsonl"


def run(protocol: ladders.Protocol, ladder, out: Path, environ=os.environ, say=lambda text, final=False: None
        ) -> list[dict]:
    """Run LADDER (a name or rungs) under PROTOCOL; rows are written to OUT/results.jsonl as they come. SAY(text,
    final) is told what happens: each rung's progress (FINAL False: the next line replaces it), then its summary."""
    from sdcpu.bench import peak
    from sdcpu.models import parse_spec, random_models, Source

    model = parse_spec(protocol.model)  # refuse a bad spec before anything runs
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    cpu = hardware.detect()
    say(f"preparing: {protocol.model} (random models are built on first use), fp32 matmul peak", True)
    if model.kind is Source.RANDOM:
        random_models.ensure_built(model.ref)  # so the first rung does not pay the build
    context = {
        "inputs": inputs.write(protocol, out / "inputs"),  # img2img and inpainting: the image every rung starts from
        "protocol": protocol.to_dict(), "cpu": cpu.to_dict(), "versions": versions(), "git": git_sha(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "matmul_peak_gflop_s": {"float32": peak.matmul_peak_gflops("float32"),
                                **({"bfloat16": peak.matmul_peak_gflops("bfloat16")} if cpu.native_bf16 else {})},
    }
    rows, gen = [], ladders.rungs(ladder, cpu)
    rung, started = next(gen), time.perf_counter()
    with open(out / RESULTS, "w") as results:
        while True:
            row = {"index": len(rows), "rung": rung.name, "recipe": rung.recipe, "peer": rung.peer, "parent": rung.parent,
                   **({"note": rung.note} if rung.note else {}), **context}
            row.update(run_rung(rung, row, protocol, out, cpu, environ,
                                lambda event: say(progress_line(row, rung, event, started))))
            if "median_s" in row and rows and "median_s" in rows[0]:
                row["fidelity"] = compare(row, rows[0], out)
            results.write(json.dumps(row) + "\n")
            results.flush()
            rows.append(row)
            say(summary_line(row), True)
            try:
                rung = gen.send(row)
            except StopIteration:
                break
    return rows


def run_rung(rung: ladders.Rung, row: dict, protocol, out: Path, cpu, environ, on_progress) -> dict:
    """The rung's own fields: its child's row, or `failed` with the reason; ON_PROGRESS(event) is told each of the
    child's progress events."""
    slug = f"{row['index']:02d}-{re.sub(r'[^a-z0-9]+', '-', rung.name.lower()).strip('-')}"
    spec = {"recipe": rung.recipe, "protocol": protocol.to_dict(), "image": str(out / "images" / f"{slug}.png"),
            "inputs": row["inputs"]}
    fields, before = {"image": f"images/{slug}.png"}, []
    try:
        if rung.peer:
            command, env, before = peers.command(rung.peer, spec, cpu, environ)
        else:
            # resolved once, here: the child optimizes with exactly the recipe its launch plan was made for
            workload = profiles.workload_of(protocol.model, protocol.width, protocol.height)
            job = auto.job_of(protocol.model, protocol.width, protocol.height)
            recipe = optimizer.resolve(rung.recipe, cpu, workload, job)
            spec["recipe"] = recipe.to_json()
            command, env, plan = relaunch.child_command(recipe, cpu, environ, "sdcpu.bench.child", spec)
            prefix = plan.argv_prefix if plan else ()
            fields["launch"] = {"env": plan.env if plan else {}, "prefix": list(prefix),
                                "notes": list(plan.notes) if plan else [], "missing": list(plan.missing) if plan else []}
    except Exception as err:  # noqa: BLE001 -- a rung that cannot start is a failed row, not a dead ladder
        return {**fields, "failed": f"{type(err).__name__}: {err}"}
    fields["command"] = shlex.join(command[:-1] + ["SPEC"])
    stdout = out / "logs" / f"{slug}.out"
    with open(stdout, "w") as sink, open(out / "logs" / f"{slug}.err", "w") as log:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.PIPE, text=True, env=env)
        errors = []
        for line in proc.stderr:
            log.write(line)
            if line.startswith(child.PROGRESS):
                on_progress(json.loads(line[len(child.PROGRESS):]))
            else:
                errors.append(line)
        proc.wait()
    row = children.child_row(stdout.read_text(), errors, proc.returncode)
    if before and "steps" in row:
        row["steps"] = before + row["steps"]  # what the parent prepared for a peer (a checkpoint written), timed
    return {**fields, **row}


def compare(row: dict, reference: dict, out: Path) -> dict:
    """PSNR and SSIM of ROW's image against REFERENCE's (the same seed), unless ROW's child said why they cannot be
    compared (a peer with its own noise or sampler): then that reason instead of a number."""
    if row.get("fidelity_note"):
        return {"reference": reference["rung"], "not_comparable": row["fidelity_note"]}
    image, first = _rgb(out / row["image"]), _rgb(out / reference["image"])
    return {"reference": reference["rung"], "psnr_db": fidelity.psnr(image, first), "ssim": fidelity.ssim(image, first)}


def progress_line(row, rung, event, started) -> str:
    where = f"rung {row['index'] + 1} {rung.name}"
    elapsed = f"{time.perf_counter() - started:.0f} s elapsed"
    if event["phase"] == "warm-up":
        return f"{where}: warm-up ({event['steps']} steps; compiling steps compile now), {elapsed}"
    return f"{where}: run {event['run']}/{event['runs']} {event['seconds']:.2f} s ({event['s_per_step']:.3f} s/step), {elapsed}"


def summary_line(row) -> str:
    if "failed" in row:
        return f"rung {row['index'] + 1} {row['rung']}: FAILED: {row['failed']}"
    return f"rung {row['index'] + 1} {row['rung']}: {row['median_s']:.2f} s/image median ({row['s_per_step']:.3f} s/step)"


def _rgb(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB").copy()


def git_sha() -> str | None:
    """The commit of the sdcpu source that ran, with `-dirty` when it had local changes; None outside a checkout."""
    source = Path(__file__).resolve().parents[1]  # the sdcpu package
    try:
        sha = subprocess.run(["git", "-C", source, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", source, "status", "--porcelain", "--", "."], capture_output=True, text=True)
    except OSError:
        return None
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if sha.returncode == 0 else None
