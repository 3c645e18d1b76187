"""The `auto` recipe: the best this machine supports, decided from what it is and what is installed, with reasons."""

import os

from sdcpu import launcher
from sdcpu.recipes import Recipe, Step


def recipe(cpu, environ=os.environ) -> tuple[Recipe, tuple[str, ...]]:
    """(the auto recipe for CPU, one reason per choice). System choices are the launcher's own auto options."""
    libs = launcher.find_libraries(launcher.library_dirs(environ))
    options, reasons = launcher.auto_options(cpu, libs, launcher.probe_pinning_tools(cpu))
    steps = [Step(options.allocator)] if options.allocator != "default" else []
    steps += [Step("iomp")] if options.openmp == "iomp" else []
    steps += [Step("pin")] if options.pin else []
    steps.append(Step("channels_last"))
    reasons += ("channels_last: NHWC convolutions, free to apply; measured 12.3 vs 12.5 s per fp32 SD 1.5 UNet forward",)
    if cpu.native_bf16:
        steps.append(Step("bf16"))
        reasons += (f"bf16: {cpu.native_bf16_reason}",)
    else:
        reasons += (f"no bf16: {cpu.native_bf16_reason} (a bf16 UNet forward measured 7-18x slower than fp32 on an "
                    "AVX2-only EPYC)",)
    return Recipe("auto", tuple(steps)), reasons
