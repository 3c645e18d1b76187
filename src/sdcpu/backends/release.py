"""The `release` step: one part of a pipeline call compiled at a time, so the peak memory is the largest part's, not
the sum of all of them.

A call runs its parts in turn: the text encoders, then the denoiser (every step), then the VAE (its encoder first
for img2img and inpainting, its decoder last). Under this step, a part's compiled OpenVINO models are dropped (their
repacked weights and buffers returned to the system) when another part starts, and compiled again from the IR on
disk when their part comes back: on the next image. That costs each image a compile of every part it uses (SDXL's
at 1024x1024 on a 2-core Zen 3 EPYC: the UNet 21 s from the page cache, 38 s from disk; the text encoders 20 s;
the VAE 1 s, against ~570 s for 4 steps with CFG) and saves the other parts' memory while one runs (SDXL in f32:
the UNet's 9.6 GiB while decoding, the text encoders' 3.0 GiB while denoising). `auto` adds it where a level's
recipe does not fit the machine's memory otherwise (sdcpu.recipes.memory). It needs a backend that compiles from
files (openvino); a torch model's weights would have to be loaded again instead.
"""

import logging

from sdcpu import families
from sdcpu.backends.components import Component
from sdcpu.errors import Skip
from sdcpu.models import state

log = logging.getLogger(__name__)
RELEASABLE = (state.Runtime.OPENVINO, state.Runtime.OPENVINO_INT8)


class Phases:
    """The stand-ins of one pipeline by part; entering one part drops every other part's compiled models."""

    def __init__(self):
        self.members, self.current = [], None

    def add(self, component: Component, part: str):
        component.phases, component.part = self, part
        self.members.append(component)

    def enter(self, component: Component):
        if component.part == self.current:
            return
        for member in self.members:
            if member.part != component.part:
                member.release()
        if self.current is not None:
            log.info("release: %s's compiled models dropped before the %s runs", self.current, component.part)
        self.current = component.part


def apply(pipe, step, cpu) -> str:
    runtime = state.of(pipe).runtime
    if runtime not in RELEASABLE:
        raise Skip(f"release drops compiled models and compiles them again from their files: it follows the openvino "
                   f"step (the denoiser runs as {runtime.summary} here)")
    phases, kept = Phases(), []
    for part, names in families.of(pipe).parts.items():
        for name in names:
            component = getattr(pipe, name)
            if isinstance(component, Component):
                phases.add(component, part)
            else:
                kept.append(name)  # a torch module another step put there (tiny-vae's decoder): small, kept
    return ("one part compiled at a time: the text encoders, the denoiser and the VAE each dropped when another part "
            "starts and compiled again on the next image (peak memory of the largest part; a compile per part per "
            "image)" + (f"; {', '.join(kept)} kept (torch modules)" if kept else ""))
