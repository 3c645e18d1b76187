"""The `release` step: one part of a pipeline call resident at a time, so the peak memory is the largest part's, not
the sum of all of them.

A call runs its parts in turn: the text encoders, then the denoiser (every step), then the VAE (its encoder first
for img2img and inpainting, its decoder last). Under this step, entering one part drops the others':
- on OpenVINO, their compiled models (repacked weights and buffers), compiled again from the IR on disk when their
  part comes back, on the next image. That costs each image a compile of every part it uses (SDXL's at 1024x1024 on
  a 2-core Zen 3 EPYC: the UNet 21 s from the page cache, 38 s from disk; the text encoders 20 s; the VAE 1 s,
  against ~570 s for 4 steps with CFG) and saves the other parts' memory while one runs (SDXL in f32: the UNet's
  9.6 GiB while decoding, the text encoders' 3.0 GiB while denoising);
- on eager torch, the text encoders' and the denoiser's weights are read in place from the model's .safetensors
  files, mapped read-only (sdcpu.backends.mapped.map_weights: no copy), and a part's mapped pages are dropped from
  the process when another part starts (madvise): they fault back in from the page cache (or the disk, where the
  kernel evicted them) when their part runs again. Only weights stored in the dtype they run in can be mapped (a
  bf16 model's, FLUX.2's; with `weights=bf16` its layers' bf16 weights); the VAE (small) stays as loaded.
`auto` adds it where a level's recipe does not fit the machine's memory otherwise (sdcpu.recipes.memory).
"""

import logging
from pathlib import Path

from sdcpu import families
from sdcpu.backends import mapped
from sdcpu.backends.components import Component
from sdcpu.errors import Skip
from sdcpu.models import state

log = logging.getLogger(__name__)
RELEASABLE = (state.Runtime.OPENVINO, state.Runtime.OPENVINO_INT8, state.Runtime.OPENVINO_COMPRESSED)


class Phases:
    """The members of one pipeline by part, each with what drops its memory; entering one part drops every other
    part's."""

    def __init__(self):
        self.members, self.current = [], None

    def add(self, part: str, release):
        self.members.append((part, release))

    def enter(self, part: str):
        if part == self.current:
            return
        for other, release in self.members:
            if other != part:
                release()
        if self.current is not None:
            log.info("release: %s dropped before the %s runs", self.current, part)
        self.current = part


def apply(pipe, step, cpu) -> str:
    runtime = state.of(pipe).runtime
    if runtime is state.Runtime.EAGER:
        return _eager(pipe)
    if runtime not in RELEASABLE:
        raise Skip(f"release drops compiled models or mapped weights and reads them again from their files: it serves "
                   f"the openvino step and eager torch (the denoiser runs as {runtime.summary} here)")
    phases, kept = Phases(), []
    for part, names in families.of(pipe).parts.items():
        for name in names:
            component = getattr(pipe, name)
            if isinstance(component, Component):
                component.phases, component.part = phases, part
                phases.add(part, component.release)
            else:
                kept.append(name)  # a torch module another step put there (tiny-vae's decoder): small, kept
    return ("one part compiled at a time: the text encoders, the denoiser and the VAE each dropped when another part "
            "starts and compiled again on the next image (peak memory of the largest part; a compile per part per "
            "image)" + (f"; {', '.join(kept)} kept (torch modules)" if kept else ""))


def _eager(pipe) -> str:
    if state.of(pipe).rounded:
        raise Skip(f"weights={state.of(pipe).stored} keeps its rounded weights in memory, not in the model's files: "
                   "nothing to map")
    family = families.of(pipe)
    folder = _folder(pipe)
    phases, mapped_parts = Phases(), []
    for part, names in family.parts.items():
        if part == "vae":
            continue
        for name in names:
            module = getattr(pipe, name)
            files = mapped.map_weights(module, sorted((folder / name).glob("*.safetensors")))
            if not files:
                continue
            phases.add(part, lambda files=files: [mapped.release(path) for path in files])
            module.register_forward_pre_hook(lambda module, args, part=part: phases.enter(part))
            mapped_parts.append(name)
    state.of(pipe).mapped = bool(mapped_parts)
    if not mapped_parts:
        raise Skip("no weights here are stored in the dtype they run in (a float32 model under bf16 or weights=bf16 "
                   "is converted, not mapped): nothing to release")
    return (f"{', '.join(mapped_parts)} read in place from their mapped .safetensors files, one part resident at a "
            "time (its pages dropped when another part starts, read again from the page cache or disk when it runs "
            "again)")


def _folder(pipe) -> Path:
    """The diffusers folder PIPE's model was loaded from, on this machine; Skip where there is none (a single-file
    checkpoint, a pipeline built in memory)."""
    from sdcpu import models

    spec = state.of(pipe).model
    index = spec and models.local_file(spec, "model_index.json")
    if index is None:
        raise Skip("release on eager torch maps a diffusers folder's weight files: this model was not loaded from one "
                   "(a single-file checkpoint, or a pipeline made in memory)")
    return index.parent
