"""Where a pipeline call spends its time: text encoder, UNet (per call) and VAE decode, timed with perf_counter."""

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

# (component attribute, method) pairs timed during a call; the UNet is called once per denoising step.
TIMED = (("text_encoder", "forward"), ("unet", "forward"), ("vae", "decode"))


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
    for name, method in TIMED:
        component = getattr(pipe, name, None)
        if component is None:
            continue
        own = vars(component).get(method)  # torch.compile's module keeps its compiled forward on the instance
        setattr(component, method, _timed(getattr(component, method), name, split))
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
