"""The `weights=bf16|int8|int4` step: every weight of the text encoders and the denoiser stored small, every layer
computed in float32.

Where the CPU has no native bf16 (AVX2, AVX-512 without AVX512_BF16), torch's bf16 matmuls are emulated: a
1536x3072 by 3072x9216 linear (one of FLUX.2's at 512x512) ran at 21.7 GFLOP/s in bf16 against 171 in float32 on a
2-core Zen 3 (2026-12-04), so a model whose weights are bf16 (FLUX.2: in float32 its transformer and text encoder
would take 26 GiB) runs 8x slower than the machine can. Here each layer keeps its weight small and makes the float32
copy of it for its own call only (one layer's at a time: 156 GFLOP/s on that linear from bf16), and every other
tensor (norms, biases, buffers) is float32: float32 arithmetic throughout at the memory of the stored weights.
- bf16: Linear, Conv2d and Embedding weights in bfloat16 (a bf16 model's own weights, FLUX.2's; a float32 model's
  rounded, like `bf16`'s).
- int8: Linear weights rounded to int8 with one float32 scale per output row (symmetric), Embedding rows likewise:
  a byte a weight. Weight-only, so activations keep float32.
- int4: Linear weights rounded to 4 bits in groups of 128 along the input (64 or 32 where 128 does not divide it),
  each group with its float32 scale and minimum (asymmetric), two to a byte: 0.56 bytes a weight; Embedding rows in
  int8 as above.
The networks report float32, so the pipeline keeps its latents and prompt states in float32 too. The VAE (small,
convolutions at full resolution) runs in float32 outright. This is the step on eager torch; after `openvino` it
compresses the IR's weights instead (sdcpu.backends.stored chooses).
Rounding is done in every process as the step applies, a layer at a time, 16M weights at a time (their float32
copy is the only extra memory), each loaded weight's pages of its mapped file dropped once it is replaced.
"""

from types import MethodType

import torch
from torch.nn import functional

from sdcpu import families
from sdcpu.backends import mapped
from sdcpu.models import state

GROUPS = (128, 64, 32)  # int4's group sizes along a weight's input, the largest that divides it taken
CHUNK = 1 << 24  # elements of a weight rounded at a time (64 MiB in float32)


def _linear_bf16(self, x):
    return functional.linear(x.float(), self.weight.float(), self.bias)


# The dequantizations write one float32 weight and scale it in place: for a 9216x3072 weight on 2 Zen 3 cores, int8
# 56 ms (105 with a second temporary), int4 65 ms (159 through stack and out-of-place arithmetic), against 525 ms for
# its linear over 1536 tokens (2026-12-05)
def _linear_int8(self, x):
    return functional.linear(x.float(), self.weight.float().mul_(self.weight_scale), self.bias)


def _linear_int4(self, x):
    packed = self.weight  # [out, in / 2] bytes: the low nibble the even input, the high one the odd
    weight = torch.empty(*packed.shape, 2)
    weight[..., 0], weight[..., 1] = packed & 15, packed >> 4
    weight = weight.view(packed.shape[0], self.weight_scale.shape[1], -1)
    weight.mul_(self.weight_scale[..., None]).add_(self.weight_min[..., None])
    return functional.linear(x.float(), weight.flatten(1), self.bias)


def _conv_bf16(self, x):
    return self._conv_forward(x.float(), self.weight.float(), self.bias)


def _embedding(self, ids):
    rows = functional.embedding(ids, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                                self.scale_grad_by_freq, self.sparse).float()  # the rows gathered, then upcast
    scale = getattr(self, "weight_scale", None)
    return rows if scale is None else rows * functional.embedding(ids, scale)


def _rows(weight, convert) -> None:
    """CONVERT(rows as float32, start) over WEIGHT's rows, CHUNK elements at a time: the float32 copy of a weight
    (FLUX.2's Qwen3 embedding: 389M parameters, 1.6 GB) is never made whole."""
    count = max(1, CHUNK // weight.shape[1])
    for start in range(0, weight.shape[0], count):
        convert(weight[start:start + count].to(torch.float32, copy=True), start)  # a copy: converted in place


def _int8(layer) -> None:
    """LAYER's weight as int8 rows, each with its float32 scale (largest magnitude / 127)."""
    weight = layer.weight.data
    levels, scale = torch.empty(weight.shape, dtype=torch.int8), torch.empty(weight.shape[0], 1)

    def convert(rows, start):
        rows_scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny) / 127
        levels[start:start + len(rows)] = torch.round(rows.div_(rows_scale))
        scale[start:start + len(rows)] = rows_scale

    _rows(weight, convert)
    layer.weight = torch.nn.Parameter(levels, requires_grad=False)
    layer.register_buffer("weight_scale", scale)


def _int4(layer) -> bool:
    """LAYER's weight as 4-bit levels in groups along its input, each group's scale and minimum kept in float32;
    False (left as it is) where no group size divides its input."""
    weight = layer.weight.data
    out, inputs = weight.shape
    group = next((size for size in GROUPS if inputs % size == 0), None)
    if group is None:
        return False
    packed = torch.empty(out, inputs // 2, dtype=torch.uint8)
    scale, low = torch.empty(out, inputs // group), torch.empty(out, inputs // group)

    def convert(rows, start):
        grouped = rows.view(len(rows), -1, group)
        rows_low = grouped.amin(dim=-1)
        rows_scale = ((grouped.amax(dim=-1) - rows_low) / 15).clamp(min=torch.finfo(torch.float32).tiny)
        levels = torch.round(grouped.sub_(rows_low[..., None]).div_(rows_scale[..., None])).clamp_(0, 15)
        levels = levels.to(torch.uint8).view(len(rows), inputs)
        end = start + len(rows)
        packed[start:end] = levels[:, 0::2] | (levels[:, 1::2] << 4)
        scale[start:end], low[start:end] = rows_scale, rows_low

    _rows(weight, convert)
    layer.weight = torch.nn.Parameter(packed, requires_grad=False)
    layer.register_buffer("weight_scale", scale)
    layer.register_buffer("weight_min", low)
    return True


def store(module: torch.nn.Module, form: str, spans=()) -> int:
    """MODULE computed in float32 from weights stored in FORM (bf16, int8 or int4), in place; the number of layers
    whose weight is stored so. A loaded weight replaced by its stored copy has its pages dropped where it lies in one of
    SPANS (mapped.file_spans: its model file's mapping), as each layer is done: they would otherwise stay counted until
    the last weight of the file is freed (FLUX.2's transformer: 7.75 GB beside its rounded copy). A subclass with a
    forward of its own is made float32 whole (its forward is not this one's)."""
    stored = set()
    for layer in module.modules():
        kind = type(layer)
        if kind not in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding):
            continue
        loaded = layer.weight.data
        if kind is torch.nn.Linear and form == "int4" and _int4(layer):
            forward = _linear_int4
        elif kind is torch.nn.Linear and form != "bf16":  # int8, or an int4 layer whose input no group size divides
            _int8(layer)
            forward = _linear_int8
        elif kind is torch.nn.Embedding and form != "bf16":
            _int8(layer)
            forward = _embedding
        else:
            layer.weight.data = layer.weight.data.to(torch.bfloat16)
            forward = {torch.nn.Linear: _linear_bf16, torch.nn.Conv2d: _conv_bf16}.get(kind, _embedding)
        layer.forward = MethodType(forward, layer)
        stored.add(id(layer.weight))
        if layer.weight.data_ptr() != loaded.data_ptr():
            mapped.drop(loaded, spans)
    for tensor in (*module.parameters(), *module.buffers()):
        if id(tensor) not in stored and tensor.is_floating_point():
            tensor.data = tensor.data.float()
    module.__class__ = _reporting_float32(type(module))
    return len(stored)


_CLASSES = {}


def _reporting_float32(cls):
    """CLS with a `dtype` of float32 (the pipeline casts inputs and latents to a network's dtype; its first weight
    says bf16 or int8): the same name, so a saved model's config names its own class."""
    if cls not in _CLASSES:
        _CLASSES[cls] = type(cls.__name__, (cls,), {"dtype": property(lambda self: torch.float32),
                                                     "__module__": cls.__module__})
    return _CLASSES[cls]


def apply(pipe, step, cpu) -> str:
    """The step on eager torch (sdcpu.backends.stored hands it here)."""
    family = families.of(pipe)
    spans = mapped.file_spans(".safetensors")
    counted = {name: store(getattr(pipe, name), step.value, spans)
               for name in (*family.text_encoders, family.denoiser.attribute)}
    state.of(pipe).stored = step.value
    getattr(pipe, family.decoder).float()
    native = "" if cpu.native_bf16 else f" (no native bf16 here: {cpu.native_bf16_reason})"
    how = {"bf16": "stored in bfloat16", "int8": "rounded to int8 (a scale per row)",
           "int4": "rounded to 4 bits (a scale and minimum per group of up to 128 inputs; embeddings int8)"}
    return (f"weights of {', '.join(f'{name} ({count} layers)' for name, count in counted.items())} {how[step.value]}, "
            f"each layer computed in float32{native if step.value == 'bf16' else ''}; the {family.decoder} in float32")
