"""One pipeline preparation, the same for every entry point (generate, batch, serve, bench, tune): load a model,
optimize it with a recipe, read the request defaults it then has, and make one warm-up call where a step compiles
(compiling backends compile on their first call: that time is kept apart from the requests')."""

import time
from dataclasses import dataclass

from sdcpu import models, recipes
from sdcpu.pipeline import generate, optimizer


@dataclass(frozen=True)
class Prepared:
    """A pipeline ready for requests, and what preparing it did."""

    pipe: object  # the diffusers pipeline, optimized in place
    outcomes: tuple  # optimizer.Outcome of each framework and algorithm step of the recipe
    defaults: generate.Defaults  # what its requests leave unset takes (the recipe's steps= and guidance= included)
    load_seconds: float
    warmup: generate.Result | None  # the warm-up call (a compile included), None where none was made

    @property
    def compiles(self) -> bool:
        """Whether an applied step compiles on the first call."""
        return any(o.applied and recipes.kind(o.step).compiles for o in self.outcomes)

    @property
    def skipped(self) -> tuple:
        """The outcomes of the steps that did not apply, each saying why."""
        return tuple(o for o in self.outcomes if not o.applied)


def prepare(spec, recipe, cpu, *, warmup=None, edit=None, always_warm: bool = False, base=None,
            progress: bool = False, loaded=None, optimized=None, on_phase=None) -> Prepared:
    """SPEC's pipeline optimized by RECIPE for CPU.

    WARMUP(defaults) is the warm-up request (with EDIT: img2img, inpainting), made where a step compiles, or always
    with ALWAYS_WARM; None: no warm-up. BASE: the defaults the recipe's own go over (the model's). PROGRESS: a
    progress bar while loading. LOADED(pipe) runs once the model is loaded, before optimizing (checks and facts of
    the model as loaded); OPTIMIZED(pipe) once it is optimized, before the warm-up (LoRAs, a scheduler).
    ON_PHASE(text) is told each phase as it starts."""
    say = on_phase or (lambda text: None)
    say(f"loading {spec}")
    start = time.perf_counter()
    pipe = models.load_pipeline(spec, progress=progress, dtype=optimizer.load_dtype(recipe, cpu))
    load_seconds = time.perf_counter() - start
    if loaded:
        loaded(pipe)
    say(f"optimizing with {recipe}")
    _, outcomes = optimizer.optimize(pipe, recipe, cpu)
    if optimized:
        optimized(pipe)
    defaults = generate.defaults_for(pipe, base)
    prepared = Prepared(pipe, outcomes, defaults, load_seconds, None)
    if warmup is None or not (always_warm or prepared.compiles):
        return prepared
    request = warmup(defaults)
    say(f"warming up: one {request.steps}-step call at {request.width}x{request.height}")
    return Prepared(pipe, outcomes, defaults, load_seconds, generate.run(pipe, request, edit))
