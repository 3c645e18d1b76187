"""sdcpu: Stable Diffusion inference as fast as the CPU allows, with honest measurements."""

__version__ = "0.1.0"  # as pyproject.toml says; a literal, since a peer's child imports sdcpu without installing it


def load_pipeline(spec: str, **kwargs):
    """Return the diffusers pipeline for a model spec: ``random:ARCH``, a hub id, a folder or a ``.safetensors`` file."""
    from sdcpu.models import load_pipeline as _load

    return _load(spec, **kwargs)


def optimize(pipe, recipe="auto", cpu=None):
    """Apply a recipe's framework and algorithm steps to PIPE in place: returns (pipe, outcome of each step)."""
    from sdcpu.pipeline.optimizer import optimize as _optimize

    return _optimize(pipe, recipe, cpu)


def pipeline_for(pipe, task: str):
    """diffusers' own pipeline for TASK ("txt2img", "img2img", "inpaint") on PIPE's components, made once with
    ``from_pipe``: one set of weights, optimized or not, serves all three."""
    from sdcpu.pipeline.tasks import pipeline_for as _for

    return _for(pipe, task)


def use_loras(pipe, loras, fuse=False):
    """Make PIPE run with exactly LORAS (``sdcpu.models.loras.Lora``s, or ``"FILE_OR_ID[:WEIGHT]"`` strings; empty:
    none), whatever recipe optimized it; returns what was done. ``fuse``: on the eager UNet, fuse the set into the
    weights (no per-step cost, a fuse per switch). Raises ``sdcpu.errors.Skip`` where the backend cannot take a LoRA
    (compile, int8), with the reason."""
    from sdcpu.models.loras import parse
    from sdcpu.pipeline.lora import use

    return use(pipe, tuple(parse(item) if isinstance(item, str) else item for item in loras), fuse)
