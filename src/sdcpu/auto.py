"""The `auto` recipe: the best this machine supports, with reasons: what `sdcpu tune` measured here when a tuned
profile matches (sdcpu.tune.profile says how), else decided from what the machine is and what is installed.

`auto` takes a quality level (`auto:exact`, `auto` = `auto:high`, `auto:fast`; `--quality` on the command line) that
bounds which steps it may use, measured against the fp32 image of the same seed:
- exact: fp32 steps only; every image within 1e-4 max abs of eager fp32 (tests/test_steps.py, test_openvino.py).
- high: adds bf16 (torch or OpenVINO) where the CPU has it natively: 48-49 dB PSNR, SSIM >= 0.999 measured on
  random:sd15; the bound is 40 dB.
- fast: adds steps that cut work: deepcache=2 (42 dB, SSIM 0.998 measured) where the UNet runs eagerly, int8 (NNCF
  hybrid, 39.5 dB, SSIM 0.996 measured) where it runs on OpenVINO, and tiny-vae (TAESD, a distilled decoder: its
  fidelity needs real weights to measure, none here); no bound beyond "recognisably the same image" with real weights.
"""

import dataclasses
import importlib.util
import os

from sdcpu import launcher, recipes
from sdcpu.errors import UsageError
from sdcpu.recipes import Recipe, Step
from sdcpu.tune import profile

# What `fast` adds, by whether the UNet runs eagerly (deepcache needs it) or on OpenVINO, with the figures behind it.
FAST_EAGER = (("deepcache=2", "tiny-vae"), "deepcache=2 and tiny-vae: 9.56 vs 17.59 s/image on fp32 eager (random:sd15, "
              "256x256, 4 steps); deepcache=2 alone 42 dB PSNR")
FAST_OPENVINO = (("int8", "tiny-vae"), "int8 and tiny-vae: 4.41 vs 5.63 s/image on OpenVINO bf16, peak RSS 3.1 vs "
                 "6.5 GiB (random:sd15, 256x256, 4 steps); int8 alone, A B A B in one run: 3.51 and 3.15 vs 4.64 and "
                 "3.62 s/image, 39.4 dB; the first int8 use quantizes the UNet once, about 13 minutes on 2 cores, kept "
                 "on disk; deepcache needs the eager UNet")


QUALITIES = ("exact", "high", "fast")
NO_PROFILE = ("no tuned profile matches this machine, model and versions: hardware rules below, not measurements "
              "(`sdcpu tune` measures what is fastest here and auto then uses it)")


def parse(text: str) -> str:
    """`auto` or `auto:LEVEL` -> the quality level; UsageError for another level."""
    level = text.partition(":")[2] or "high"
    if level not in QUALITIES:
        raise UsageError(f"unknown quality {level!r}: choose from {', '.join(QUALITIES)}")
    return level


def system_options(cpu, environ=os.environ, libs=None, tools=None, quality="high",
                   workload=None) -> tuple[launcher.LaunchOptions, tuple[str, ...]]:
    """The system steps `auto` takes here, with one reason each: those of a tuned profile that matches (see
    sdcpu.tune.profile), else the launcher's hardware rules, less a preloaded allocator where auto runs OpenVINO (its
    CPU plugin aborts beside one). `sdcpu launch --auto` uses the same."""
    found = profile.find(cpu, quality, workload)
    if found:
        return recipes.launch_options(recipes.parse(found.recipe)), (found.reason(workload is not None),)
    return _rule_options(cpu, environ, libs, tools, quality)


def _rule_options(cpu, environ, libs, tools, quality) -> tuple[launcher.LaunchOptions, tuple[str, ...]]:
    libs = launcher.find_libraries(launcher.library_dirs(environ)) if libs is None else libs
    tools = launcher.probe_pinning_tools(cpu) if tools is None else tools
    options, reasons = launcher.auto_options(cpu, libs, tools)
    if _use_openvino(cpu, quality) and options.allocator != "default":
        reasons = tuple(r for r in reasons if not r.startswith("allocator")) + (
            f"no {options.allocator}: with a preloaded allocator OpenVINO 2026.4's CPU plugin aborts the process "
            "(free(): invalid size), and auto runs OpenVINO here",)
        options = dataclasses.replace(options, allocator="default")
    if _use_openvino(cpu, quality) and options.pin:
        reasons += ("pinned, OpenMP threads not bound to cores: binding ties the main thread to one core and OpenVINO's "
                    "threads inherit it (random:sd-turbo 512x512 on OpenVINO, UNet per call: bound 1.41 vs 0.69 s "
                    "unpinned; unbound 0.74 vs 0.75 s)",)
        options = dataclasses.replace(options, bind_threads=False)
    return options, (NO_PROFILE,) + reasons


def describe_plan(cpu, environ=os.environ) -> str:
    """The system steps auto takes and why, then their launch plan (for `sdcpu info`)."""
    libs = launcher.find_libraries(launcher.library_dirs(environ))
    tools = launcher.probe_pinning_tools(cpu)
    options, reasons = system_options(cpu, environ, libs, tools)
    first = launcher.plan(cpu, options, environ, libs, tools)[0]
    return "\n".join([*(f"- {reason}" for reason in reasons), "", launcher.format_plan(first)])


def _use_openvino(cpu, quality: str) -> bool:
    return quality != "exact" and cpu.native_bf16 and importlib.util.find_spec("openvino") is not None


def recipe(cpu, environ=os.environ, quality="high", workload=None) -> tuple[Recipe, tuple[str, ...]]:
    """(the auto recipe for CPU at QUALITY, one reason per choice): a matching tuned profile's recipe (WORKLOAD: the
    model and size, when the caller knows them), else the hardware rules."""
    name = "auto" if quality == "high" else f"auto:{quality}"
    found = profile.find(cpu, quality, workload)
    if found:
        steps = list(recipes.parse(found.recipe).steps)
        reasons = (found.reason(workload is not None),)
        if quality == "fast":
            backend = any(step.name in ("compile", "openvino", "ipex") for step in steps)
            fast, why = FAST_OPENVINO if backend else FAST_EAGER
            steps += [Step.parse(step) for step in fast]
            reasons += (f"quality fast, on top of the profile: {why}",)
        return Recipe(name, tuple(steps)), reasons
    options, reasons = _rule_options(cpu, environ, None, None, quality)
    use_openvino = _use_openvino(cpu, quality)
    steps = [Step(options.allocator)] if options.allocator != "default" else []
    steps += [Step("iomp")] if options.openmp == "iomp" else []
    steps += [Step("pin")] if options.pin else []
    reasons += ("no channels_last: no measured gain (fp32 SD 1.5 UNet forward 12.3 vs 12.5 s on an AVX2 EPYC, 8.4 vs "
                "7.1 s on an AMX Xeon) and +2.9 GiB peak RSS while the weights are converted",)
    if quality == "exact":
        reasons += ("quality exact: fp32 only; no bf16 (max abs drift ~2e-2 on the output, PSNR ~48 dB)",)
    elif use_openvino:
        steps.append(Step("openvino"))
        reasons += (f"openvino in bf16 ({cpu.native_bf16_reason}): 3.39 vs 5.12 s/image for torch bf16 (random:sd15, "
                    "256x256, 4 steps, AMX Xeon, one bench run); IR converted once (~40 s), then a few s per process",)
    elif cpu.native_bf16:
        steps.append(Step("bf16"))
        reasons += (f"bf16: {cpu.native_bf16_reason} (openvino is faster where installed: pip install openvino)",)
    else:
        reasons += (f"no bf16: {cpu.native_bf16_reason} (a bf16 UNet forward measured 7-18x slower than fp32 on an "
                    "AVX2-only EPYC)",)
    if quality == "fast":
        fast, why = FAST_OPENVINO if use_openvino else FAST_EAGER
        steps += [Step.parse(step) for step in fast]
        reasons += (f"quality fast: {why}",)
    return Recipe(name, tuple(steps)), reasons


def resolve_for(text: str, cpu, model: str, width: int, height: int) -> tuple[Recipe, str | None]:
    """A recipe string for a job on MODEL at WIDTHxHEIGHT: `auto` / `auto:LEVEL` from a tuned profile for that
    workload, else the hardware rules, with the first reason (which of the two it was); another recipe as parsed."""
    if not recipes.is_auto(text):
        return recipes.parse(text), None
    found, reasons = recipe(cpu, quality=parse(text.strip()), workload=profile.workload_of(model, width, height))
    return found, reasons[0]

