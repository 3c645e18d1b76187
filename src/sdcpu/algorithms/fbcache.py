"""The `fbcache=T` step: First Block Cache (ParaAttention's) on a FLUX-style diffusion transformer (FLUX.2's).

Every denoiser call runs the transformer's first block. Where that block's residual (its image output minus its image
input) changed by less than T since the last call that ran in full, relative to it (mean absolute values, as
ParaAttention and diffusers measure it), every other block is skipped and the residual they added in that full call
is added again; otherwise they all run and their residual is kept. A skipped call costs one block of the
transformer's (FLUX.2 klein 4B: 5 double-stream and 20 single-stream blocks) plus its input and output layers.
T trades speed for drift: 0.08 is ParaAttention's default for FLUX models (published: 2x on FLUX.1-dev's 28 steps on
a GPU). How many calls skip depends on the weights, the prompt and the schedule, so a figure measured on random weights
says how fast a given number of skipped calls is, not how many a real model skips.

FLUX's transformer runs its double-stream blocks on the text and image tokens apart, then joins them (text first) for
the single-stream blocks: the skipped blocks' residual is kept on the joined tokens, the last block's output minus the
first block's two outputs joined. (diffusers' own FirstBlockCacheConfig assumes the first and last blocks return alike
and fails on FLUX.2's: a TypeError in its tail hook, diffusers 0.42.1.)

Each image starts with a full call: the cache is cleared whenever the pipeline's scheduler starts a new schedule
(diffusers clears its hooks' state only when a call finishes; a failed or cancelled one would leave it).
Classifier-free guidance's two calls a step (klein base) keep a cache each, by the pipeline's cache contexts. The
blocks run eagerly: a recipe with fbcache takes no backend step (one after it is skipped). A UNet's step cache is
deepcache.
"""

import weakref
from dataclasses import dataclass, field

from sdcpu import families
from sdcpu.errors import Skip

DEFAULT = 0.08  # ParaAttention's residual_diff_threshold for FLUX models
HOOK = "sdcpu_fbcache"


@dataclass
class Tally:
    """The current (or last) image's denoiser calls, and how many of them ran every block."""

    calls: int = 0
    full: int = 0

    def __str__(self):
        return said(self.full, self.calls)


def said(full: int, calls: int) -> str:
    """How the commands and the bench's reports say an image's tally."""
    return f"every block ran on {full} of the last image's {calls} denoiser calls, the first block alone on the others"


@dataclass
class _State:
    """One cache context's (the conditional or the unconditional call's)."""

    residual: "torch.Tensor | None" = None  # the first block's image residual in the last full call
    skipped: "torch.Tensor | None" = None  # what the other blocks added to the joined tokens in it
    head: tuple | None = None  # this call's first-block outputs, until the last block has run
    full: bool = True


@dataclass
class _Cache:
    pipe: weakref.ref  # the pipeline (weakly: its scheduler says when a new image starts)
    threshold: float
    tally: Tally = field(default_factory=Tally)
    states: dict = field(default_factory=dict)  # cache context name -> _State
    schedule: object = None

    def first(self, context: str, forward, args, kwargs):
        timesteps = self.pipe().scheduler.timesteps
        if timesteps is not self.schedule:  # a new image
            self.schedule, self.states = timesteps, {}
            self.tally.calls = self.tally.full = 0
        state = self.states.setdefault(context, _State())
        text, image = forward(*args, **kwargs)
        residual = image - _argument(args, kwargs, "hidden_states", 0)
        previous = state.residual
        state.full = (state.skipped is None or previous is None or previous.shape != residual.shape
                      or ((residual - previous).abs().mean() / previous.abs().mean()).item() >= self.threshold)
        self.tally.calls, self.tally.full = self.tally.calls + 1, self.tally.full + state.full
        if state.full:
            state.residual, state.head = residual, (text, image)
        return text, image

    def middle(self, context: str, forward, args, kwargs, double: bool):
        if self.states[context].full:
            return forward(*args, **kwargs)
        image = _argument(args, kwargs, "hidden_states", 0)
        return (_argument(args, kwargs, "encoder_hidden_states", 1), image) if double else image

    def last(self, context: str, forward, args, kwargs):
        import torch

        state = self.states[context]
        if not state.full:
            return _argument(args, kwargs, "hidden_states", 0) + state.skipped
        out = forward(*args, **kwargs)
        state.skipped, state.head = out - torch.cat(state.head, dim=1), None
        return out


def _argument(args, kwargs, name: str, position: int):
    return kwargs[name] if name in kwargs else args[position]


def _hooks():
    """The block hooks, made on first use (diffusers' hook classes import only with the step)."""
    from diffusers.hooks.hooks import ModelHook, StateManager

    class Contexts:  # a state class diffusers' StateManager can make; sdcpu keeps the states in _Cache
        def reset(self):
            pass

    class First(ModelHook):
        _is_stateful = True  # diffusers sets the call's cache context ("cond", "uncond") on its state_manager

        def __init__(self, cache: _Cache):
            super().__init__()
            self.cache, self.state_manager = cache, StateManager(Contexts)

        def context(self) -> str:
            """The call's cache context; a call made outside one (a user's own loop) keeps a cache of its own."""
            try:
                return self.state_manager.context.name
            except ValueError:
                return ""

        def new_forward(self, module, *args, **kwargs):
            return self.cache.first(self.context(), self.fn_ref.original_forward, args, kwargs)

        def reset_state(self, module):
            self.cache.states = {}
            return module

    class Other(ModelHook):
        def __init__(self, first: First, last: bool, double: bool):
            super().__init__()
            self.first, self.last, self.double = first, last, double

        def new_forward(self, module, *args, **kwargs):
            cache, context = self.first.cache, self.first.context()
            if self.last:
                return cache.last(context, self.fn_ref.original_forward, args, kwargs)
            return cache.middle(context, self.fn_ref.original_forward, args, kwargs, self.double)

    return First, Other


def apply(pipe, step, cpu) -> str:
    from diffusers import Flux2Transformer2DModel
    from diffusers.hooks.hooks import HookRegistry

    denoiser = getattr(pipe, families.of(pipe).denoiser.attribute)
    if not isinstance(denoiser, Flux2Transformer2DModel):
        found = type(denoiser).__name__
        raise Skip(f"needs diffusers' eager Flux2Transformer2DModel, found {found}"
                   + (" (a UNet's step cache is deepcache)" if "UNet" in found else
                      " (a backend step ran first: fbcache runs without one)"))
    if _first(denoiser):
        raise Skip("fbcache is already on this transformer")
    threshold = step.value or DEFAULT
    First, Other = _hooks()
    first = First(_Cache(weakref.ref(pipe), threshold))
    doubles, singles = list(denoiser.transformer_blocks), list(denoiser.single_transformer_blocks)
    hooks = [(doubles[0], first), *((block, Other(first, False, True)) for block in doubles[1:]),
             *((block, Other(first, False, False)) for block in singles[:-1]), (singles[-1], Other(first, True, False))]
    for block, hook in hooks:
        HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, HOOK)
    HookRegistry.check_if_exists_or_initialize(denoiser).invalidate_child_registries_cache()
    return (f"the transformer's other blocks skipped where its first block's residual changed by less than "
            f"{threshold:g} (relative) since the last full call")


def tally(pipe) -> Tally | None:
    """The denoiser calls of PIPE's current or last image under fbcache, or None without it."""
    first = _first(getattr(pipe, families.of(pipe).denoiser.attribute, None))
    return first.cache.tally if first else None


def _first(denoiser):
    """The hook fbcache put on DENOISER's first block, or None."""
    blocks = getattr(denoiser, "transformer_blocks", None)
    registry = getattr(blocks[0], "_diffusers_hook", None) if blocks else None
    return registry.get_hook(HOOK) if registry else None
