"""LoRAs on the `openvino` backend, without converting the UNet from torch again (its torch module is gone).

- dW per layer: each LoRA is loaded by diffusers' own loader (kohya conversion, alphas, peft metadata) into a
  skeleton of the UNet and of the text encoder built from their configs: meta-device modules whose base weights are
  zero-stride CPU tensors (no memory), so peft's `get_delta_weight` gives B @ A x scale exactly as the eager adapters
  apply it. A set's dW = sum of weight x that, in float32.
- The IR: the converted weights are Constants named after the traced torch parameters (`self.module.<layer>.weight`,
  [out, in] as torch's); `Edited` reads the IR (memory-mapped), replaces each target Constant with W + dW and
  compiles that model. OpenVINO's compiled-blob cache is off for it (CACHE_DIR ""): with CACHE_MODE OPTIMIZE_SIZE a
  blob carries no weights, so an edited model must never meet a blob or weights file of another. The IR on disk is
  never written.
- Switching: the compiled UNet and text encoder of the last $SDCPU_LORA_SETS LoRA sets (default 1) are kept (keyed
  by each LoRA's source and weight); switching back to one is a dictionary look-up, to none the base compiled models.
  A new set pays dW and one compile per component it changes, at every input size the base has compiled. Each kept
  set costs one compiled UNet's memory: random:sd15 f32 at 512x512, 4.0 GiB each (RSS 5.5 -> 9.5 -> 13.5 GiB with two
  kept, benchmarks/lora_switch.py), where a new set's compile took 4.8-8.3 s: hence one by default.

Not done: switching without recompiling (LoRA A/B as extra inputs or states on each target MatMul, as OpenVINO GenAI
does) would trade the compile per new set for extra matmuls at every step (the eager UNet's unfused adapters cost
+14% per call at rank 16, sdcpu.pipeline.lora); with a few sets in turn, the kept compiled sets cost nothing per step.
"""

import os
import time
from collections import OrderedDict

import numpy as np
import torch

from sdcpu import families
from sdcpu.backends import openvino
from sdcpu.errors import Skip, UsageError
from sdcpu.models import state
from sdcpu.models.loras import loading

SETS_VARIABLE, DEFAULT_SETS = "SDCPU_LORA_SETS", 1


def kept_sets() -> int:
    """How many LoRA sets stay compiled ($SDCPU_LORA_SETS, default 1; 0 keeps none but the base)."""
    text = os.environ.get(SETS_VARIABLE, str(DEFAULT_SETS))
    if not text.isdigit():
        raise UsageError(f"{SETS_VARIABLE}={text!r}: a whole number >= 0 of LoRA sets kept compiled")
    return int(text)
ADAPTER = "delta"


def targets(pipe) -> tuple[str, ...]:
    """The components of PIPE a LoRA may change: its family's denoiser and text encoders."""
    return families.of(pipe).lora_targets


def use(pipe, loras) -> str:
    kept = state.of(pipe)
    if kept.lora is None:  # made at the first call: the runs it keeps as base are LoRA-free
        kept.lora = Switch(pipe)
    return kept.lora.use(pipe, tuple(loras))


class Switch:
    """The base compiled UNet and text encoder of PIPE, and those of the last kept_sets() LoRA sets."""

    def __init__(self, pipe):
        self.components = targets(pipe)
        self.base = {name: getattr(pipe, name).run for name in self.components}
        self.kept = OrderedDict()
        self.hits = self.misses = 0

    def use(self, pipe, loras) -> str:
        key = tuple((lora.source, lora.digest(), lora.weight) for lora in loras)
        start, how = time.perf_counter(), "base compiled models"
        if not loras:
            runs = self.base
        elif key in self.kept:
            self.kept.move_to_end(key)
            runs, how = self.kept[key], "compiled models of this set kept in memory"
            self.hits += 1
        else:
            runs = self.kept[key] = self.build(pipe, loras)
            self.misses += 1
            while len(self.kept) > kept_sets():  # the set in use runs on until the next switch, kept or not
                self.kept.popitem(last=False)
            how = f"dW added to {', '.join(n for n in runs if runs[n] is not self.base[n])} IR weights, compiled"
        for name in self.components:
            getattr(pipe, name).run = runs[name]
        names = ", ".join(f"{lora.name}:{lora.weight:g}" for lora in loras) or "no LoRA"
        return f"{names} on OpenVINO: {how} in {time.perf_counter() - start:.2f} s"

    def build(self, pipe, loras) -> dict:
        deltas = set_deltas(pipe, loras)
        if not any(deltas.values()):
            raise Skip(f"no LoRA layers of {', '.join(lora.name for lora in loras)} match this model's "
                       f"{' or '.join(self.components)}")
        runs = {}
        for name in self.components:
            base = self.base[name]
            if not deltas[name]:
                runs[name] = base
                continue
            runs[name] = edited = Edited(base, deltas[name])
            for shapes in base.by_shape:  # pay the compile now, at the sizes already in use, not in the next image
                edited.compile(shapes)
            if not base.by_shape:
                edited.read()  # nothing compiled yet: still refuse a LoRA that does not fit this IR now
        return runs


def set_deltas(pipe, loras) -> dict[str, dict[str, torch.Tensor]]:
    """{component: {layer: sum of weight x dW}} of the LoRA set, in float32."""
    from peft.tuners.lora import LoraLayer

    total = {name: {} for name in targets(pipe)}
    for lora in loras:
        for name, model in skeletons(pipe, lora).items():
            for layer, module in model.named_modules():
                if not isinstance(module, LoraLayer) or ADAPTER not in module.lora_A:
                    continue
                if module.use_dora.get(ADAPTER) or module.lora_bias.get(ADAPTER):
                    raise Skip(f"LoRA {lora.name}: DoRA and LoRA biases are not applied to OpenVINO weights")
                delta = lora.weight * module.get_delta_weight(ADAPTER).detach().float()
                total[name][layer] = total[name][layer] + delta if layer in total[name] else delta
    return total


def skeletons(pipe, lora) -> dict:
    """Skeletons of PIPE's LoRA targets (built by its family from their configs, on the meta device) with LORA loaded
    by the family's diffusers loaders as adapter ADAPTER."""
    family = families.of(pipe)
    with torch.device("meta"):
        models = family.skeletons(pipe)
    for model in models.values():
        for module in model.modules():  # peft puts adapters on the base layer's device: CPU, with no memory
            for tensors, make in ((module._parameters, lambda t: torch.nn.Parameter(t, requires_grad=False)),
                                  (module._buffers, lambda t: t)):
                for key, tensor in list(tensors.items()):
                    if tensor is not None:
                        tensors[key] = make(torch.zeros((), dtype=tensor.dtype).expand(tensor.shape))
    with loading(lora):
        config = getattr(pipe, family.denoiser.attribute).config
        state_dict, options = family.lora_state(type(pipe), lora.source, config, **lora.loader_kwargs())
        family.load_lora(type(pipe), state_dict, models, adapter_name=ADAPTER, low_cpu_mem_usage=True, **options)
    return models


def _float32(constant) -> np.ndarray:
    """A weight Constant's values in float32: a bf16 model's IR keeps its weights bf16 (numpy has no bf16: OpenVINO
    hands their bits as 16-bit integers, the upper half of a float32's)."""
    data = constant.get_data()
    if constant.get_element_type().get_type_name() != "bf16":
        return data
    return (data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


class Edited(openvino.Compiled):
    """BASE's IR with DELTAS added to its layers' weight Constants, compiled without OpenVINO's blob cache."""

    def __init__(self, base: openvino.Compiled, deltas: dict[str, torch.Tensor]):
        super().__init__(base.core, base.path, {**base.config, "CACHE_DIR": ""}, f"{base.name}+lora")
        self.deltas = deltas

    def read(self):
        from openvino import opset13 as opset

        model = super().read()
        constants = {op.get_friendly_name(): op for op in model.get_ordered_ops() if op.get_type_name() == "Constant"}
        for layer, delta in self.deltas.items():
            constant = constants.get(f"self.module.{layer}.weight")
            if constant is None or tuple(constant.shape) != tuple(delta.shape):
                raise Skip(f"the {self.name} IR has no weight of {layer}'s shape {tuple(delta.shape)} to add a LoRA to")
            weight = _float32(constant) + delta.numpy()
            replaced = opset.constant(weight, dtype=np.float32)  # the Convert after a bf16 weight passes it through
            replaced.set_friendly_name(constant.get_friendly_name())
            constant.output(0).replace(replaced.output(0))
        return model
