"""The recipe steps behind `sdcpu.optimize(pipe, recipe)`: framework and algorithm steps applied to a pipeline.

Each step is a plain function `(pipe, step, cpu) -> detail` in REGISTRY that changes the pipeline in place and says
what it did, or raises Skip with the reason it does not apply here. The pipeline stays a diffusers pipeline. System
steps (allocator, OpenMP, threads, pinning) act at process start, so the launcher applies them, not this module.
"""

import importlib
import logging
import time
from dataclasses import dataclass

from sdcpu import families, recipes
from sdcpu.errors import Skip
from sdcpu.models import schedulers, state
from sdcpu.system import hardware

log = logging.getLogger(__name__)
REGISTRY = {}


@dataclass(frozen=True)
class Outcome:
    """What one step of a recipe did to a pipeline, as the reports show it."""

    step: str  # the step as written in the recipe, e.g. "bf16!" or "scheduler=dpm++"
    applied: bool
    detail: str  # what was done, or why it was skipped
    seconds: float = 0.0  # time the step itself took (lazy compilers pay most on the first call instead)

    def __str__(self):
        return f"{self.step}: {'applied' if self.applied else 'skipped'}: {self.detail}"


def step(name):
    def register(fn):
        REGISTRY[name] = fn
        return fn

    return register


def optimize(pipe, recipe="auto", cpu=None):
    """Apply RECIPE (a name, a step list or a Recipe) to PIPE in place; return (pipe, outcomes of each step)."""
    cpu = cpu or hardware.detect()
    if isinstance(recipe, str):
        recipe = resolve(recipe, cpu, job=job_of(pipe))
    refuses, outcomes = families.of(pipe).refusals(cpu.native_bf16), []
    for item in recipe.steps:
        if item.group == "system":
            continue
        start = time.perf_counter()
        kind = recipes.kind(item.name)
        try:
            if item.name in refuses:
                raise Skip(refuses[item.name])
            patched = state.of(pipe).patched
            if kind.role == "backend" and patched:
                raise Skip(f"{patched} patched the eager {families.of(pipe).denoiser.label} before it: {item.name} "
                           f"would convert the patched network or reuse the plain one's; use {patched} without a "
                           "backend, or the backend without it")
            detail, applied = REGISTRY[item.name](pipe, item, cpu), True
        except Skip as skip:
            detail, applied = str(skip), False
        if applied and kind.patches:
            state.of(pipe).patched = str(item)
        outcomes.append(Outcome(str(item), applied, detail, time.perf_counter() - start))
        log.info("%s", outcomes[-1])
    state.of(pipe).recipe = recipe
    state.of(pipe).prompt_states.clear()  # states encoded before the steps changed the text encoders
    return pipe, tuple(outcomes)


def resolve(text: str, cpu, workload=None, job=None) -> recipes.Recipe:
    """A recipe string, with `auto` / `auto:QUALITY` resolved for CPU (and WORKLOAD, the model and size a tuned
    profile must match; None: the most recent profile for this machine; JOB, the family and size whose memory the
    recipe must fit: sdcpu.recipes.memory)."""
    if recipes.is_auto(text):
        from sdcpu.recipes import auto

        return auto.recipe(cpu, quality=auto.parse(text.strip()), workload=workload, job=job)[0]
    return recipes.parse(text)


def job_of(pipe):
    """The memory job of PIPE: its family at its default size (sdcpu.recipes.memory)."""
    from sdcpu.recipes import memory

    family = families.of(pipe)
    defaults = family.defaults_of(pipe)
    return memory.Job(family, defaults.width, defaults.height)


@step("channels_last")
def channels_last(pipe, item, cpu):
    import torch

    family = families.of(pipe)
    for name in (family.denoiser.attribute, family.decoder):
        getattr(pipe, name).to(memory_format=torch.channels_last)
    return f"{family.denoiser.label} and VAE convolution weights in NHWC (channels_last); oneDNN picks NHWC kernels"


@step("bf16")
def bf16(pipe, item, cpu):
    import torch

    if not recipes.bf16_runs(item, cpu):
        raise Skip(f"no native bf16 on this CPU ({cpu.native_bf16_reason}); `bf16!` forces it")
    pipe.to(dtype=torch.bfloat16)
    verdict = cpu.native_bf16_reason if cpu.native_bf16 else "FORCED on a CPU without native bf16: expect it slower"
    return f"UNet, VAE and text encoder weights and activations in bfloat16 ({verdict})"


def load_dtype(recipe: recipes.Recipe, cpu):
    """The dtype a model is loaded in for RECIPE on CPU: bfloat16 where its bf16 step will apply (each weight cast as
    it is read, not the whole float32 model loaded and then cast), else None: its family's (Family.dtype). The bf16
    step then finds it cast; the weights are the same as cast after loading."""
    import torch

    item = recipe.get("bf16")
    return torch.bfloat16 if item is not None and recipes.bf16_runs(item, cpu) else None


@step("scheduler")
def scheduler(pipe, item, cpu):
    schedulers.set_scheduler(pipe, item.value)
    return f"{type(pipe.scheduler).__name__} from the model's scheduler config"


# Steps that live in a module of their own (heavy imports stay out of the others' way): `apply(pipe, item, cpu)`.
def _module_step(module: str):
    def apply(pipe, item, cpu):
        return importlib.import_module(module).apply(pipe, item, cpu)

    return apply


for _name, _kind in recipes.STEP_KINDS.items():
    if _kind.module:
        step(_name)(_module_step(_kind.module))


@step("steps")
def steps(pipe, item, cpu):
    state.of(pipe).defaults["num_inference_steps"] = item.value
    return f"{item.value} denoising steps unless a call says otherwise"


@step("guidance")
def guidance(pipe, item, cpu):
    state.of(pipe).defaults["guidance_scale"] = item.value
    return f"guidance scale {item.value} unless a call says otherwise" + (" (<= 1: no CFG batch)" if item.value <= 1 else "")
