"""One bench rung, run inside its own fresh process (started by the runner under the rung's launch plan).

`python -m sdcpu.bench.child SPEC_JSON` prepares the model (sdcpu.pipeline.prepare: loads it, applies the recipe's
framework and algorithm steps, makes one warm-up call: it compiles, for compiling steps, timed apart), then makes the
timed calls with the per-component split, saves the image of the last call, and prints one JSON row on stdout
(`write_row`). Progress goes to stderr as `PROGRESS {json}` lines.
"""

import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from sdcpu.system import children

PROGRESS = "PROGRESS "


def progress(**event) -> None:
    print(PROGRESS + json.dumps(event), file=sys.stderr, flush=True)


def cache_state() -> dict:
    """Which compile caches already hold something: a compiling rung runs cold or warm."""
    from sdcpu.system.home import sdcpu_home

    return {name: any((sdcpu_home() / name).glob("*")) for name in ("inductor", "openvino")}


def run(spec: dict) -> dict:
    import torch

    from sdcpu import recipes
    from sdcpu.bench import inputs, ladders
    from sdcpu.families.base import Defaults
    from sdcpu.models import parse_spec
    from sdcpu.pipeline import generate, outputs
    from sdcpu.pipeline.prepare import prepare
    from sdcpu.system import hardware, verify

    # 1. What the launcher really applied, before anything else runs.
    snap = verify.snapshot()
    row = {"verify": {**verify_summary(snap), "failures": verify.check(snap)}, "cache_before": cache_state()}

    # 2. Load, optimize, then the warm-up call: the first call compiles, for compiling steps; its time is kept apart.
    protocol = ladders.Protocol.from_dict(spec["protocol"])
    model = parse_spec(protocol.model)
    recipe = recipes.Recipe.from_json(spec["recipe"])  # resolved by the runner, which planned the launch for it
    edit = inputs.edit(spec.get("inputs"))  # img2img, inpainting: the runner's input image

    def warmup_request(defaults):
        progress(phase="warm-up", steps=protocol.warmup_steps_used)
        return _request(protocol, defaults, steps=protocol.warmup_steps_used)

    prepared = prepare(model, recipe, hardware.detect(), warmup=warmup_request, edit=edit, always_warm=True,
                       base=Defaults(protocol.steps, protocol.guidance, protocol.width, protocol.height))
    pipe, outcomes, warmup = prepared.pipe, prepared.outcomes, prepared.warmup
    row["load_s"] = round(prepared.load_seconds, 2)
    row["recipe_resolved"] = str(recipe)
    row["steps"] = [{"step": o.step, "applied": o.applied, "detail": o.detail, "s": round(o.seconds, 2)}
                    for o in outcomes]
    request = _request(protocol, prepared.defaults)
    protocol = dataclasses.replace(protocol, steps=request.steps)  # a recipe's own steps (lcm-lora's 4): steps run

    # 3. Timed calls, each with its component split.
    calls = []
    for index in range(protocol.runs):
        result = generate.run(pipe, request, edit)
        calls.append(result)
        progress(phase="run", run=index + 1, runs=protocol.runs, seconds=result.seconds,
                 s_per_step=result.seconds / protocol.steps_run)
    text = outputs.parameters_text(request, request.seed, model=str(model), random_weights=model.random_weights,
                                   scheduler=type(pipe.scheduler).__name__, recipe=str(recipe), edit=edit)
    outputs.save_png(calls[-1].images[0], Path(spec["image"]), text)

    # 4. The row: times, split, hardware-relative figures, memory.
    row.update(figures(pipe, outcomes, request, protocol, calls, warmup.seconds),
               random_weights=model.random_weights, threads=torch.get_num_threads())
    return row


def figures(pipe, outcomes, request, protocol, calls, warmup_seconds: float) -> dict:
    """The row's figures of the timed CALLS: times, the per-component split, the denoiser's FLOPs and GFLOP/s (none
    where a step runs part of the network on some calls), fbcache's full calls of the last image."""
    from sdcpu import families, recipes
    from sdcpu.algorithms import fbcache

    times = [c.seconds for c in calls]
    unet_calls = calls[-1].split.calls.get("unet", 0)
    cfg_batch = 2 if request.guidance > 1 else 1
    latent = (request.height // pipe.vae_scale_factor, request.width // pipe.vae_scale_factor)
    family = families.of(pipe)
    unet_flops = family.flops(getattr(pipe, family.denoiser.attribute).config, cfg_batch, latent)
    unet_s = statistics.median(c.split.seconds.get("unet", 0.0) for c in calls)
    cached = fbcache.tally(pipe)
    partial = (any(o.applied and recipes.kind(o.step).partial_calls and o.step != "deepcache=1" for o in outcomes)
               and not (cached and cached.full == unet_calls))  # deepcache=1, or fbcache that skipped nothing: full
    return dict(
        steps_applied=request.steps, steps_run=protocol.steps_run, guidance=request.guidance, cfg_batch=cfg_batch,
        scheduler=type(pipe.scheduler).__name__,
        **timing_fields(times, protocol.steps_run, warmup_seconds, protocol.run_count(protocol.warmup_steps_used)),
        split={
            "text_encoder_s": statistics.median(c.split.seconds.get("text_encoder", 0.0) for c in calls),
            "unet_s": unet_s, "unet_calls": unet_calls, "unet_per_call_s": unet_s / max(1, unet_calls),
            "vae_decode_s": statistics.median(c.split.seconds.get("vae", 0.0) for c in calls),
        },
        prepare_s=round(sum((o.seconds for o in outcomes), 0.0), 2),
        unet_gflops_per_call=unet_flops / 1e9, unet_gflop_s=unet_flops * unet_calls / unet_s / 1e9
        if unet_s and not partial else None,
        denoiser_full_calls=cached.full if cached else None,
    )


def _request(protocol, defaults, **changes):
    """The call each timed run makes (with CHANGES): the protocol's, at the recipe's own steps and guidance."""
    return protocol.request(**{"steps": defaults.steps, "guidance": defaults.guidance, **changes})


def protocol_calls(call, spec: dict):
    """A peer child's calls: CALL(steps) once at the warm-up steps, then its timed calls, with the progress lines
    sdcpu's own child prints; (the last call's result, the row's step counts and timing fields)."""
    protocol, edit = spec["protocol"], spec.get("inputs") or {}  # img2img, inpainting: inputs.write's counts
    warmup_steps, steps_run = edit.get("warmup_steps", protocol["warmup_steps"]), edit.get("steps_run", protocol["steps"])
    progress(phase="warm-up", steps=warmup_steps)
    start = time.perf_counter()
    call(warmup_steps)
    warmup_s, times = time.perf_counter() - start, []
    for index in range(protocol["runs"]):
        start = time.perf_counter()
        result = call(protocol["steps"])
        times.append(time.perf_counter() - start)
        progress(phase="run", run=index + 1, runs=protocol["runs"], seconds=times[-1], s_per_step=times[-1] / steps_run)
    fields = {"steps_applied": protocol["steps"], "steps_run": steps_run,
              **timing_fields(times, steps_run, warmup_s, edit.get("warmup_steps_run", warmup_steps))}
    return result, fields


def timing_fields(times: list[float], steps: int, warmup_s: float, warmup_steps: int) -> dict:
    """A rung's per-call times and their statistics (STEPS, WARMUP_STEPS: the denoising steps each timed call and the
    warm-up call run); the warm-up call, and the part of it beyond its share of a timed call (compilation,
    first-touch); peak RSS of this process so far."""
    median = statistics.median(times)
    return {"times_s": [round(t, 3) for t in times], "mean_s": statistics.mean(times), "median_s": median,
            "min_s": min(times), "max_s": max(times), "s_per_step": median / steps, "warmup_s": round(warmup_s, 2),
            "compile_s": round(max(0.0, warmup_s - median * warmup_steps / steps), 2),
            "peak_rss_gib": children.peak_rss_gib()}


def verify_summary(snap: dict) -> dict:
    return {"mapped": snap["mapped"], "torch_threads": snap["torch_threads"], "affinity": snap["affinity"],
            "env": snap["env"]}


def main() -> int:
    children.write_row(run(json.loads(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
