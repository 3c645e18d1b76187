"""The models one server serves (`serve --model A --model B ...`): each one's name, recipe and preparation, its pipeline
while it is held, what its requests are checked against, and the memory it took when it was prepared.

The worker (serve/queue.py) holds every model that fits the memory budget (`--max-memory`): before it prepares a
model it releases the least recently used others until the memory they took (each one's RSS growth while it was
prepared, measured: the most of its preparations, the first with its warm-up call) and the new one's fit; a model
prepared for the first time is measured first, then the others are released until the budget holds again. A released
model is prepared again from sdcpu's caches when a request asks for it (its OpenVINO IR, its random build: no
conversion twice). The first model named is the default: a request naming none gets it; it is held at start, the
others prepared once at start (to check them and measure them) and kept while they fit.
"""

import ctypes
import gc
import logging
import time
from dataclasses import dataclass, field

from sdcpu.serve import schemas
from sdcpu.system import children

log = logging.getLogger(__name__)
GIB = 2**30


@dataclass(frozen=True)
class Facts:
    """What a model's requests are checked against, kept while it is released (schemas.Limits is made of them)."""

    defaults: object  # generate.Defaults: what a request leaves unset takes
    tokenizer: object  # a copy of its tokenizer: prompts' tokens are counted on the event loop's threads
    scheduler: str | None  # the recipe's scheduler, run when a request names none
    family: object  # families.base.Family
    control: str | None = None  # why a ControlNet cannot steer it (control.refusal); None: it can


@dataclass(eq=False)
class Model:
    name: str  # the model spec as given: what requests name it by
    recipe: str  # its resolved recipe
    random_weights: bool
    # prepare(worker, again) -> its pipeline, on the worker thread; AGAIN: prepared before (released since)
    prepare: object = field(repr=False)
    pipe: object = field(default=None, repr=False)  # while held
    facts: Facts | None = field(default=None, repr=False)  # once prepared
    gib: float | None = None  # the most RSS it took while prepared (the first time with its warm-up call)
    used: float = 0.0  # time.monotonic() of its last use
    loads: int = 0  # times prepared
    load_seconds: float | None = None  # the last preparation's
    runtime: object = field(default=None, repr=False)  # the worker's state of the held pipeline (scheduler, LoRAs)

    def describe(self) -> dict:
        """What /health says of it."""
        return {"name": self.name, "recipe": self.recipe, "random_weights": self.random_weights,
                "held": self.pipe is not None, "gib": None if self.gib is None else round(self.gib, 2),
                "loads": self.loads, "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 1)}


class Models:
    def __init__(self, models: list[Model], max_gib: float | None = None):
        """MODELS, the first the default, held within MAX_GIB (None: no bound)."""
        names = [model.name for model in models]
        if len(set(names)) < len(names):
            raise ValueError(f"model {next(n for n in names if names.count(n) > 1)!r} is named twice")
        self.all, self.max_gib = list(models), max_gib

    @classmethod
    def one(cls, name: str, prepare, recipe: str = "", random_weights: bool = False) -> "Models":
        return cls([Model(name, recipe, random_weights, prepare)])

    @property
    def default(self) -> Model:
        return self.all[0]

    def find(self, name: str | None) -> Model:
        """The model NAME names (None: the default); BadRequest naming those served when none. A server of one model
        takes any name (OpenAI clients send their own model's: dall-e-3)."""
        if name is None or len(self.all) == 1:
            return self.default
        for model in self.all:
            if model.name == name:
                return model
        raise schemas.BadRequest(f"model {name!r} is not served here; this server serves "
                                 + ", ".join(repr(model.name) for model in self.all))

    def held_gib(self) -> float:
        return sum(model.gib or 0.0 for model in self.all if model.pipe is not None)

    def hold(self, model: Model, worker) -> object:
        """MODEL's pipeline, prepared (on WORKER's thread) unless held, the least recently used others released to
        fit the budget."""
        model.used = time.monotonic()
        if model.pipe is not None:
            return model.pipe
        self._fit(model, model.gib or 0.0)
        before, start = _rss_gib(), time.perf_counter()
        pipe = model.prepare(worker, model.loads > 0)
        model.load_seconds, model.loads = time.perf_counter() - start, model.loads + 1
        # the most it took: prepared again without a warm-up, its mapped weights are not all resident yet
        model.gib, model.pipe = max(_rss_gib() - before, model.gib or 0.0), pipe
        self._fit(model, 0.0)
        log.info("serve: %s prepared in %.1f s, %.2f GiB; held: %s", model.name, model.load_seconds, model.gib,
                 ", ".join(m.name for m in self.all if m.pipe is not None))
        return pipe

    def _fit(self, keep: Model, more_gib: float) -> None:
        """Release the least recently used models but KEEP until those held and MORE_GIB fit the budget."""
        if self.max_gib is None:
            return
        others = sorted((m for m in self.all if m.pipe is not None and m is not keep), key=lambda m: m.used)
        while others and self.held_gib() + more_gib > self.max_gib:
            release(others.pop(0))


def release(model: Model) -> None:
    """Let MODEL's pipeline go, its memory given back to the system where the allocator allows."""
    log.info("serve: releasing %s (%.2f GiB) to fit --max-memory", model.name, model.gib or 0.0)
    model.pipe = model.runtime = None
    gc.collect()
    try:  # glibc keeps freed memory for reuse unless asked: give the weights' pages back
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # another C library: it gives back on its own terms
        pass


def _rss_gib() -> float:
    return children.memory_bytes("VmRSS") / GIB
