"""The measurement `sdcpu tune` makes of one configuration, in a fresh process started under its launch plan.

What it measures predicts one image of the real job: forwards of the model family's denoiser (SD's UNet) at the
target latent size and CFG batch 2, and one VAE decode, after a first call of each (where compiling backends compile:
reported apart as first_call_s). The text encoder (one call per image, ~1% of SD 1.5's time) is left out. Per repeat,
seconds per image are estimated as steps x denoiser forward + VAE decode.

    python -m sdcpu.tune.probe '{"model": "random:tiny", "recipe": RECIPE, "size": null, "repeats": 3}'

where RECIPE is a `Recipe.to_json()` string: the parent parses the recipe once and hands it down.

`run` (the parent side) starts that child under the recipe's plan (sdcpu.recipes.relaunch) and turns its row into a Result.
"""

import json
import statistics
import subprocess
import sys
import time

from sdcpu.system import children
from sdcpu.tune.search import Result

BATCH = 2  # classifier-free guidance: conditional and unconditional latents in one denoiser call


def forward(family, denoiser, config, latent: tuple[int, int]):
    """One call of FAMILY's DENOISER (CONFIG: the model's own) at LATENT (height, width) on seeded inputs, ready to
    time."""
    import torch

    inputs = family.example_inputs(config, BATCH, latent, denoiser.dtype, torch.Generator().manual_seed(1))
    args, kwargs = family.denoiser.call_arguments(inputs)
    return lambda: denoiser(*args, **kwargs, return_dict=False)


def time_calls(fn, n: int) -> tuple[list[float], object]:
    """Seconds of each of N calls of FN (perf_counter), and the last call's output."""
    times, output = [], None
    for _ in range(n):
        start = time.perf_counter()
        output = fn()
        times.append(time.perf_counter() - start)
    return times, output


def measure(spec: dict) -> dict:
    """Inside the child: prepare (load, optimize; no warm-up: the first calls are measured), time; the row the parent
    reads."""
    import torch

    from sdcpu import families, recipes
    from sdcpu.pipeline.prepare import prepare
    from sdcpu.recipes.profiles import unet_hash
    from sdcpu.system import hardware, verify

    snap = verify.snapshot()
    loaded = {}  # the model's own denoiser config and figures, read before a backend stands in for it

    def facts(pipe):
        family = loaded["family"] = families.of(pipe)
        denoiser = getattr(pipe, family.denoiser.attribute)
        config = loaded["config"] = denoiser.config
        width, height = spec["size"] or (family.native_size(pipe),) * 2
        loaded["row"] = {"width": width, "height": height, "unet_hash": unet_hash(config),
                         "unet_params": sum(p.numel() for p in denoiser.parameters())}

    prepared = prepare(spec["model"], recipes.Recipe.from_json(spec["recipe"]), hardware.detect(), loaded=facts)
    row = {"load_s": round(prepared.load_seconds, 2), **loaded["row"], "verify_failures": verify.check(snap),
           "threads": torch.get_num_threads(), "skipped": [f"{o.step}: {o.detail}" for o in prepared.skipped]}
    pipe, width, height, scale = prepared.pipe, row["width"], row["height"], prepared.pipe.vae_scale_factor
    family, vae = loaded["family"], getattr(pipe, loaded["family"].decoder)
    denoise = forward(family, getattr(pipe, family.denoiser.attribute), loaded["config"],
                      (height // scale, width // scale))
    latents = torch.randn(1, vae.config.latent_channels, height // scale, width // scale,
                          generator=torch.Generator().manual_seed(2)).to(vae.dtype)
    decode = lambda: vae.decode(latents, return_dict=False)  # noqa: E731
    with torch.inference_mode():
        first = time_calls(denoise, 1)[0] + time_calls(decode, 1)[0]
        unet_s = time_calls(denoise, spec["repeats"])[0]
        vae_s = time_calls(decode, 1)[0]
    row.update(first_call_s=round(sum(first), 3), unet_s=[round(t, 4) for t in unet_s], vae_s=round(vae_s[0], 4),
               compute_s=round(sum(first) + sum(unet_s) + vae_s[0], 3),
               peak_rss_gib=round(children.peak_rss_gib(), 2))
    return row


def run(recipe: str, spec: dict, cpu, environ, timeout_s: float) -> tuple[dict, float]:
    """Start the child for RECIPE under its launch plan; (its row, or {"failed": reason}; wall seconds)."""
    from sdcpu import recipes
    from sdcpu.recipes import relaunch

    parsed = recipes.parse(recipe)  # once: the child takes it as parsed, like a bench rung's
    command, env, _ = relaunch.child_command(parsed, cpu, environ, "sdcpu.tune.probe",
                                             {**spec, "recipe": parsed.to_json()})
    start = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=max(timeout_s, 1))
    except subprocess.TimeoutExpired:
        return {"failed": f"over the {timeout_s:.0f} s left of the budget: stopped"}, time.perf_counter() - start
    return children.child_row(done.stdout, done.stderr.splitlines(), done.returncode), time.perf_counter() - start


def to_result(config, row: dict, wall_s: float, steps: int) -> Result:
    """The child's row as a Result: one seconds-per-image sample per repeat (steps x UNet forward + VAE decode)."""
    if "failed" in row:
        return Result(config, wall_s=wall_s, status=f"failed: {row['failed']}", detail=row)
    if row["verify_failures"]:
        return Result(config, wall_s=wall_s, status=f"failed: launcher: {'; '.join(row['verify_failures'])}",
                      detail=row)
    if row["skipped"]:
        return Result(config, wall_s=wall_s, status=f"skipped: {'; '.join(row['skipped'])}", detail=row)
    samples = tuple(steps * u + row["vae_s"] for u in row["unet_s"])
    detail = {**row, "unet_median_s": statistics.median(row["unet_s"])}
    return Result(config, samples, row["first_call_s"], wall_s, detail=detail)


if __name__ == "__main__":
    children.write_row(measure(json.loads(sys.argv[1])))
