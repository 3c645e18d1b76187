"""Where a pipeline call spends its time: text encoding, the denoiser (per call) and decoding, timed with perf_counter.

The split's keys are the three roles, named as reports and bench rows have always named them: `text_encoder` (every
text encoder of the family, summed), `unet` (the family's denoiser, whatever its kind) and `vae` (its decoder).
"""

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from sdcpu import families

# a family's part -> (the method timed on each of its components, the role its time is kept under)
ROLES = {"text": ("forward", "text_encoder"), "denoiser": ("forward", "unet"), "vae": ("decode", "vae")}


def timed(pipe) -> list[tuple[str, str, str]]:
    """(component attribute, method, role) of what a call of PIPE times, by its family's parts; the denoiser runs once
    per step."""
    return [(name, *ROLES[part]) for part, names in families.of(pipe).parts.items() for name in names]


@dataclass
class Split:
    seconds: dict = field(default_factory=dict)  # component -> total seconds in this call
    calls: dict = field(default_factory=dict)  # component -> number of calls

    def per_call(self, component: str) -> float:
        return self.seconds.get(component, 0.0) / max(1, self.calls.get(component, 0))


@contextmanager
def component_split(pipe):
    """Time PIPE's components while the block runs; yields the Split being filled. Methods are restored after."""
    split = Split()
    wrapped = []
    for name, method, role in timed(pipe):
        component = getattr(pipe, name, None)
        if component is None:
            continue
        own = vars(component).get(method)  # torch.compile's module keeps its compiled forward on the instance
        setattr(component, method, _timed(getattr(component, method), role, split))
        wrapped.append((component, method, own))
    try:
        yield split
    finally:
        for component, method, own in wrapped:
            if own is None:
                delattr(component, method)  # the class's method shows through again
            else:
                setattr(component, method, own)


def _timed(fn, name, split):
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            split.seconds[name] = split.seconds.get(name, 0.0) + time.perf_counter() - start
            split.calls[name] = split.calls.get(name, 0) + 1

    return timed
