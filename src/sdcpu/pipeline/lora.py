"""`use(pipe, loras)`: the one call that makes a pipeline run with exactly a set of LoRAs (sdcpu.models.loras), on any
recipe.

How `use` switches depends on what runs the denoiser after `sdcpu.optimize` (its models.state.Runtime):
- the eager torch denoiser (baseline, channels_last, bf16, weights=..., release, deepcache, tome, lcm-lora already
  fused): each LoRA is loaded once as a peft adapter (diffusers' `load_lora_weights`, which reads each family's
  layouts: kohya's, diffusers', and for FLUX.2 BFL's and ai-toolkit's; named from a hash of its source) and a set is
  switched with `set_adapters(names, weights)` / `disable_lora()`: milliseconds, and no LoRA leaves the base weights
  untouched in any dtype. The adapters' extra matmuls cost at every step (random:sd15, rank 16, 256x256 UNet call:
  +14% on a shared 2-core machine), so `fuse=True` (what `generate --lora` uses: one set per process) also fuses the
  set into the weights (`fuse_lora`; about 5 s there) after keeping the target layers' own weights, which the next
  switch copies back: exact, where `unfuse_lora` alone subtracts dW again and drifts (8 mantissa bits in bf16).
  Weights that must not change stay unfused, the adapters beside them: release's (mapped read-only from the model's
  files) and weights=int8/int4's (a dW added to rounded weights would be rounded again);
- OpenVINO: the LoRA's per-layer dW added to the IR's weight constants (sdcpu.backends.openvino_lora), compiled once
  per set and kept in a small in-memory cache;
- `compile` (inductor, frozen weights) and `int8`: refused with the reason (Skip).
"""

from sdcpu import families
from sdcpu.errors import Skip, UsageError
from sdcpu.models import state
from sdcpu.models.loras import loading, Lora


def use(pipe, loras: tuple[Lora, ...], fuse: bool = False) -> str:
    """Make PIPE run with exactly LORAS (empty: none), whatever recipe optimized it; what was done. FUSE: on the eager
    UNet, fuse the set into the weights (no per-step cost; each switch then costs a fuse). Raises Skip where the LoRAs
    cannot apply to what runs the UNet (never leaves a LoRA silently out)."""
    sources = [lora.source for lora in loras]
    if len(set(sources)) < len(sources):
        raise UsageError("a LoRA is named twice: give each once, with its weight")
    state.of(pipe).prompt_states.clear()  # states its text encoders made before this set
    runtime = state.of(pipe).runtime
    if runtime.lora == "peft":
        fixed = _fixed(pipe)
        return _eager(pipe, loras, fuse and not fixed, fixed)
    if runtime.lora == "ir-deltas":
        from sdcpu.backends import openvino_lora

        return openvino_lora.use(pipe, loras)
    if not loras:
        return "no LoRA"
    raise Skip(runtime.no_lora)


def _fixed(pipe) -> str:
    """Why the eager weights must not change (a LoRA then runs beside them, unfused), "" where they may."""
    kept = state.of(pipe)
    if kept.mapped:
        return "read in place from their files, read-only (release)"
    if kept.rounded:
        return f"rounded to {kept.stored} (a dW added to them would be rounded again)"
    return ""


def _eager(pipe, loras, fuse: bool, fixed: str) -> str:
    _unfuse(pipe)
    loaded = _adapters(pipe)
    for lora in loras:
        if lora.adapter not in loaded:
            with loading(lora):
                pipe.load_lora_weights(lora.source, adapter_name=lora.adapter, **lora.loader_kwargs())
            if lora.adapter not in _adapters(pipe):  # diffusers only warns of keys it cannot place
                raise UsageError(f"LoRA {lora.name!r}: cannot load it (none of its keys names a layer of this "
                                 f"{families.of(pipe).name} model: a LoRA of another model family?)")
    if not loras:
        if loaded:
            pipe.disable_lora()
        return "no LoRA" + (" (adapters disabled: the base weights)" if loaded else "")
    pipe.enable_lora()
    names = [lora.adapter for lora in loras]
    pipe.set_adapters(names, [lora.weight for lora in loras])
    from peft.tuners.lora import LoraLayer

    family = families.of(pipe)
    adapted = {name: [layer for layer in getattr(pipe, name).modules() if isinstance(layer, LoraLayer)]
               for name in family.lora_targets}
    labels = {family.denoiser.attribute: family.denoiser.label}
    how = f"peft adapters on the eager {' and '.join(labels.get(name, name) for name in adapted if adapted[name])}"
    if fuse:
        # the adapted layers' own weights, kept to put back exactly: unfuse_lora subtracts dW again, which drifts
        state.of(pipe).lora = [(layer, layer.base_layer.weight.detach().clone())
                               for layers in adapted.values() for layer in layers]
        pipe.fuse_lora(adapter_names=names)
        how += ", fused into their weights"
    elif fixed:
        how += f", unfused: the weights stay as they are, {fixed}"
    return f"{how}: " + ", ".join(f"{lora.name}:{lora.weight:g}" for lora in loras)


def _adapters(pipe) -> set[str]:
    return {name for names in pipe.get_list_adapters().values() for name in names}


def _unfuse(pipe) -> None:
    """Put back the weights a fused set changed, exactly, and mark the adapters unmerged."""
    kept = state.of(pipe)
    originals, kept.lora = kept.lora, None
    if originals is None:
        return
    pipe.unfuse_lora()
    for layer, weight in originals:
        layer.base_layer.weight.data.copy_(weight)
