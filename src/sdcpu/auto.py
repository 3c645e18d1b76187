"""The `auto` recipe: the best this machine supports, decided from what it is and what is installed, with reasons."""

import dataclasses
import importlib.util
import os

from sdcpu import launcher
from sdcpu.recipes import Recipe, Step


def system_options(cpu, environ=os.environ, libs=None, tools=None) -> tuple[launcher.LaunchOptions, tuple[str, ...]]:
    """The system steps `auto` takes here, with one reason each: the launcher's hardware rules, less a preloaded
    allocator where auto runs OpenVINO (its CPU plugin aborts beside one). `sdcpu launch --auto` uses the same."""
    libs = launcher.find_libraries(launcher.library_dirs(environ)) if libs is None else libs
    tools = launcher.probe_pinning_tools(cpu) if tools is None else tools
    options, reasons = launcher.auto_options(cpu, libs, tools)
    if _use_openvino(cpu) and options.allocator != "default":
        reasons = tuple(r for r in reasons if not r.startswith("allocator")) + (
            f"no {options.allocator}: with a preloaded allocator OpenVINO 2026.4's CPU plugin aborts the process "
            "(free(): invalid size), and auto runs OpenVINO here",)
        options = dataclasses.replace(options, allocator="default")
    return options, reasons


def describe_plan(cpu, environ=os.environ) -> str:
    """The system steps auto takes and why, then their launch plan (for `sdcpu info`)."""
    libs = launcher.find_libraries(launcher.library_dirs(environ))
    tools = launcher.probe_pinning_tools(cpu)
    options, reasons = system_options(cpu, environ, libs, tools)
    first = launcher.plan(cpu, options, environ, libs, tools)[0]
    return "\n".join([*(f"- {reason}" for reason in reasons), "", launcher.format_plan(first)])


def _use_openvino(cpu) -> bool:
    return cpu.native_bf16 and importlib.util.find_spec("openvino") is not None


def recipe(cpu, environ=os.environ) -> tuple[Recipe, tuple[str, ...]]:
    """(the auto recipe for CPU, one reason per choice)."""
    options, reasons = system_options(cpu, environ)
    use_openvino = _use_openvino(cpu)
    steps = [Step(options.allocator)] if options.allocator != "default" else []
    steps += [Step("iomp")] if options.openmp == "iomp" else []
    steps += [Step("pin")] if options.pin else []
    reasons += ("no channels_last: no measured gain (fp32 SD 1.5 UNet forward 12.3 vs 12.5 s on an AVX2 EPYC, 8.4 vs "
                "7.1 s on an AMX Xeon) and +2.9 GiB peak RSS while the weights are converted",)
    if use_openvino:
        steps.append(Step("openvino"))
        reasons += (f"openvino in bf16 ({cpu.native_bf16_reason}): 3.39 vs 5.12 s/image for torch bf16 (random:sd15, "
                    "256x256, 4 steps, AMX Xeon, one bench run); IR converted once (~40 s), then a few s per process",)
    elif cpu.native_bf16:
        steps.append(Step("bf16"))
        reasons += (f"bf16: {cpu.native_bf16_reason} (openvino is faster where installed: pip install openvino)",)
    else:
        reasons += (f"no bf16: {cpu.native_bf16_reason} (a bf16 UNet forward measured 7-18x slower than fp32 on an "
                    "AVX2-only EPYC)",)
    return Recipe("auto", tuple(steps)), reasons
