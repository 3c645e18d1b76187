"""The `bf16-weights` step: every weight stored in bfloat16, every layer computed in float32.

Where the CPU has no native bf16 (AVX2, AVX-512 without AVX512_BF16), torch's bf16 matmuls are emulated: a
1536x3072 by 3072x9216 linear (one of FLUX.2's at 512x512) ran at 21.7 GFLOP/s in bf16 against 171 in float32 on a
2-core Zen 3 (2026-12-04), so a model whose weights are bf16 (FLUX.2: in float32 its transformer and text encoder
would take 26 GiB) runs 8x slower than the machine can. Here each Linear, Conv2d and Embedding keeps its weight in
bf16 and casts it to float32 for its own call (one layer's float32 copy at a time: 156 GFLOP/s on that linear), and
every other tensor (norms, biases, buffers) is float32: the memory of bf16 weights at about float32's speed, with
float32 arithmetic throughout (nearer the weights' own result than bf16 compute). The networks report float32, so the
pipeline keeps its latents and prompt states in float32 too. A float32 model (SD, SDXL) has its weights rounded to
bf16: half their memory, an approximation like `bf16`'s. The VAE (small, convolutions at full resolution) runs in
float32 outright. Eager torch only: a backend converts weights of its own.
"""

from types import MethodType

import torch
from torch.nn import functional

from sdcpu import families
from sdcpu.errors import Skip
from sdcpu.models import state


def _linear(self, x):
    return functional.linear(x.float(), self.weight.float(), self.bias)


def _conv(self, x):
    return self._conv_forward(x.float(), self.weight.float(), self.bias)


def _embedding(self, ids):
    return functional.embedding(ids, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                                self.scale_grad_by_freq, self.sparse).float()  # the rows gathered, then upcast


FORWARDS = {torch.nn.Linear: _linear, torch.nn.Conv2d: _conv, torch.nn.Embedding: _embedding}


def upcast(module: torch.nn.Module) -> int:
    """MODULE computed in float32 from bf16-stored weights, in place; the number of layers whose weight is stored in
    bf16. A subclass with a forward of its own is made float32 whole (its forward is not this module's to replace)."""
    stored = set()
    for layer in module.modules():
        forward = FORWARDS.get(type(layer))
        if forward is None:
            continue
        layer.weight.data = layer.weight.data.to(torch.bfloat16)
        layer.forward = MethodType(forward, layer)
        stored.add(id(layer.weight))
    for tensor in (*module.parameters(), *module.buffers()):
        if id(tensor) not in stored and tensor.is_floating_point():
            tensor.data = tensor.data.float()
    module.__class__ = _reporting_float32(type(module))
    return len(stored)


_CLASSES = {}


def _reporting_float32(cls):
    """CLS with a `dtype` of float32 (the pipeline casts inputs and latents to a network's dtype; its first weight
    says bf16): the same name, so a saved model's config names its own class."""
    if cls not in _CLASSES:
        _CLASSES[cls] = type(cls.__name__, (cls,), {"dtype": property(lambda self: torch.float32),
                                                     "__module__": cls.__module__})
    return _CLASSES[cls]


def apply(pipe, step, cpu) -> str:
    runtime = state.of(pipe).runtime
    if runtime is not state.Runtime.EAGER:
        raise Skip(f"bf16-weights changes the eager torch modules; the denoiser runs as {runtime.summary} here")
    family = families.of(pipe)
    counted = {name: upcast(getattr(pipe, name)) for name in (*family.text_encoders, family.denoiser.attribute)}
    decoder = getattr(pipe, family.decoder)
    decoder.float()
    native = "" if cpu.native_bf16 else f" (no native bf16 here: {cpu.native_bf16_reason})"
    return (f"weights of {', '.join(f'{name} ({count} layers)' for name, count in counted.items())} stored in "
            f"bfloat16, each layer computed in float32{native}; the {family.decoder} in float32")
