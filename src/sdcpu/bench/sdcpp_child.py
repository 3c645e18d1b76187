"""The stable-diffusion.cpp peer rung, run by its own Python (scripts/setup-sdcpp.sh): ggml's C++ engine for SD.

Argv: one JSON spec, {protocol, image, model_path (an original-layout .safetensors, sdcpu.models.single_file), files
(the networks read from files of their own, by sd.cpp option: FLUX.2's llm_path and vae_path; then model_path is the
diffusion model alone), variant ("f32", "q8_0", "f16" or "q4_0": sd.cpp's weight type, converted on load; sd.cpp keeps
convolution kernels f16 whatever the type), threads (the usable physical cores), random_weights}. The engine is used
as its own CLI uses it for text-to-image: one context holding the model (VAE decode-only), the given threads, torch's
CPU generator for the initial noise (rng "cpu"), flash attention off (its docs: slower on most backends). Loading
(with the q8_0 conversion) is timed apart, then one warm-up call and the timed calls; one JSON row on stdout, sd.cpp's
own log (phase times included) on stderr.
"""

import json
import os
import re
import sys
import time
from importlib.metadata import version

from sdcpu.bench.child import protocol_calls
from sdcpu.system.children import write_row

TRAIN_TIMESTEPS = 1000  # SD's, and sd.cpp's fixed TIMESTEPS
SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")  # diffusers options that move sigmas
EULER = {"EulerDiscreteScheduler": "euler", "EulerAncestralDiscreteScheduler": "euler_a"}  # diffusers -> sd.cpp


def sampler_for(scheduler: dict, steps: int) -> tuple[str, str, str | None]:
    """(sd.cpp sample method, its sigma schedule, why its images cannot be compared with diffusers' or None) for
    the diffusers scheduler config SCHEDULER (its `_class_name` included) at STEPS."""
    name = scheduler.get("_class_name")
    if name == "FlowMatchEulerDiscreteScheduler":  # FLUX.2: sd.cpp's flow Euler on its own shifted schedule
        return "euler", "default", (
            "sd.cpp's flow-matching Euler on its own shifted sigmas and its own noise layout and FLUX.2 VAE "
            "statistics, not diffusers' dynamic shift; not a fidelity figure")
    if name == "PNDMScheduler":
        return "ipndm", "discrete", (
            "sampler ipndm on sd.cpp's discrete timesteps (it has no PNDM) vs diffusers' PNDM on leading ones: the "
            "same initial noise, a different denoising path; not a fidelity figure")
    if name not in EULER:
        raise ValueError(f"no stable-diffusion.cpp sampler chosen for diffusers' {name} "
                         "(supported: PNDM, Euler, Euler Ancestral)")
    method = EULER[name]
    schedule, note = euler_schedule(scheduler, steps)
    if note is None and method == "euler_a" and steps > 1:
        # At 1 step (sigma_max to 0) Euler Ancestral adds no noise: it is Euler. Past it each step adds fresh noise:
        # sd.cpp draws it from the generator that drew the initial noise (rng and sampler_rng are one "cpu" generator
        # here), as diffusers does, but that its draws are torch's is measured for the initial noise only.
        note = (f"Euler Ancestral at {steps} steps: each step's ancestral noise is sd.cpp's own draw, not shown to be "
                "diffusers'; not a fidelity figure")
    return method, schedule, note


def euler_schedule(scheduler: dict, steps: int) -> tuple[str, str | None]:
    """(sd.cpp sigma schedule, why its timesteps are not diffusers' or None) for an Euler or Euler Ancestral SCHEDULER
    at STEPS."""
    reshaped = [flag for flag in SIGMA_FLAGS if scheduler.get(flag)]
    if reshaped:
        return "discrete", f"Euler with {reshaped[0]}, not mapped to an sd.cpp schedule; not a fidelity figure"
    # sd.cpp's "simple" schedule takes timesteps 999 - floor(i * 1000 / n), diffusers' trailing
    # round(1000 - i * 1000 / n) - 1: the same when n divides 1000. Its "discrete" takes 999 - i * 999 / (n - 1),
    # diffusers' linspace for n > 1. Both start from noise * the first sigma, as diffusers' Euler does.
    spacing = scheduler.get("timestep_spacing", "linspace")
    if spacing == "trailing":
        same = TRAIN_TIMESTEPS % steps == 0
        return "simple", None if same else (
            f"Euler at {steps} steps: sd.cpp's simple timesteps are diffusers' trailing ones only when the steps "
            f"divide {TRAIN_TIMESTEPS}; not a fidelity figure")
    if spacing == "linspace":
        return "discrete", None if steps > 1 else (
            "Euler at 1 step: sd.cpp's discrete schedule runs t=999, diffusers' linspace t=0; not a fidelity figure")
    return "discrete", f"Euler on {spacing} timesteps, which sd.cpp has no schedule for; not a fidelity figure"


def checkpoint_scheduler(path: str) -> dict:
    """The diffusers scheduler config sdcpu.models.single_file stored in the checkpoint's safetensors header."""
    with open(path, "rb") as file:
        header = json.loads(file.read(int.from_bytes(file.read(8), "little")))
    stored = header.get("__metadata__", {}).get("sdcpu_scheduler")
    if stored is None:
        raise ValueError(f"{path}: no sdcpu_scheduler in its metadata (written by sdcpu.models.single_file.ensure_checkpoint)")
    return json.loads(stored)


def main() -> int:
    spec = json.loads(sys.argv[1])
    protocol = spec["protocol"]
    # sd.cpp prints progress bars on C's stdout: it gets stderr, the row alone goes to the real stdout.
    row_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    from stable_diffusion_cpp import StableDiffusion, sd_get_system_info

    engine_version = version("stable-diffusion-cpp-python")
    weights = spec["variant"]  # the rung's variant (stable-diffusion.cpp:q8_0): sd.cpp's weight type
    # What ggml was compiled for ("AVX2 = 1 | AVX512 = 1 | ..."): the -march=native build shows in it.
    features = [name for name, on in re.findall(r"(\w+) = (\d)", sd_get_system_info().decode()) if on == "1"]
    method, schedule, note = sampler_for(checkpoint_scheduler(spec["model_path"]), protocol["steps"])

    # 1. Load; q8_0 is converted from the f32 file here, as `sd-cli --type q8_0` does.
    start = time.perf_counter()
    edit = spec.get("inputs") or {}  # img2img, inpainting: the bench's input image (sdcpu.bench.inputs)
    files = spec.get("files") or {}  # networks read from files of their own (FLUX.2: llm_path, vae_path)
    model = {"diffusion_model_path" if files else "model_path": spec["model_path"], **files}
    engine = StableDiffusion(**model, wtype=weights, n_threads=spec["threads"],
                             rng_type="cpu", sampler_rng_type="cpu", vae_decode_only=not edit, verbose=True)
    load_s = time.perf_counter() - start
    cfg_scale = protocol["guidance"] if protocol["guidance"] > 1 else 1.0  # diffusers: guidance <= 1 is no CFG

    images = {"init_image": edit["image"], "strength": edit["strength"]} if edit else {}
    if edit.get("mask"):
        images["mask_image"] = edit["mask"]

    def call(steps):
        return engine.generate_image(
            protocol["prompt"], negative_prompt=protocol["negative_prompt"], width=protocol["width"],
            height=protocol["height"], cfg_scale=cfg_scale, sample_method=method, scheduler=schedule,
            sample_steps=steps, seed=protocol["seed"], **images)[0]

    # 2. One warm-up call, then the timed calls.
    image, timing = protocol_calls(call, spec)
    image.convert("RGB").save(spec["image"])  # the wrapper adds an opaque alpha channel to sd.cpp's RGB
    row = {
        "recipe_resolved": f"stable-diffusion.cpp (stable-diffusion-cpp-python {engine_version}) {weights} "
                           f"weights (conv kernels f16), {spec['threads']} threads, sampler {method}/{schedule}, "
                           "rng cpu",
        "steps": [{"step": "load", "applied": True, "s": round(load_s, 2),
                   "detail": f"{spec['model_path']} loaded" + (f", converted to {weights}"
                                                               if weights != "f32" else "")}],
        "load_s": round(load_s, 2), "prepare_s": round(load_s, 2),
        "guidance": protocol["guidance"], "cfg_batch": 2 if cfg_scale > 1 else 1, "scheduler": f"{method}/{schedule}",
        "random_weights": spec["random_weights"], "threads": spec["threads"], "fidelity_note": note,
        "ggml_cpu_features": features,
        **timing,
    }
    write_row(row, row_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
