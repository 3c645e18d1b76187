"""Model families: one module each (`sd`: SD 1.x and 2.x; `sdxl`: SDXL base, Turbo, inpainting; `flux2`: FLUX.2
[klein]), declaring what is particular to it (sdcpu.families.base).

`of(pipe)` is the family of a loaded pipeline, `of_arch(name)` the family of a `random:NAME` architecture; a pipeline
of no family sdcpu knows is refused with the families it runs.
"""

from sdcpu.errors import UsageError
from sdcpu.families import flux2, sd, sdxl
from sdcpu.families.base import Family

FAMILIES: tuple[Family, ...] = (sd.FAMILY, sdxl.FAMILY, flux2.FAMILY)
ARCHS = {arch: family for family in FAMILIES for arch in family.archs}  # random:ARCH -> its family


def named(pipeline_class: str) -> Family:
    """The family whose pipelines include PIPELINE_CLASS (a diffusers class name), or a one-line UsageError."""
    for family in FAMILIES:
        if family.runs(pipeline_class):
            return family
    known = "; ".join(f"{family.name}: {family.summary}" for family in FAMILIES)
    raise UsageError(f"{pipeline_class} is of no model family sdcpu runs ({known})")


def of(pipe) -> Family:
    """PIPE's family."""
    return named(type(pipe).__name__)


def of_arch(arch: str) -> Family:
    """The family of random:ARCH."""
    return ARCHS[arch]


def of_single_file(repo: str, checkpoint=None) -> tuple[Family, str | None]:
    """The family of a single-file checkpoint diffusers reads as hub REPO's, and the architecture whose config sdcpu
    builds for it (None: the config comes from the hub): first a family that knows CHECKPOINT (its tensors) by its
    keys and shapes, else the family declaring REPO. A repo no family declares loads as SD's, as diffusers'
    StableDiffusionPipeline would."""
    for family in FAMILIES:
        arch = None if checkpoint is None else family.checkpoint_arch(checkpoint)
        if arch:
            return family, arch
    for family in FAMILIES:
        if repo in family.single_file_configs:
            return family, family.single_file_configs[repo]
    return sd.FAMILY, None
