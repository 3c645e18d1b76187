"""The `lcm-lora` step: few-step sampling with a Latent Consistency LoRA, fused into the UNet, and the LCM scheduler.

An LCM-LoRA distils a model's 20-50-step sampling into 2-8 steps. It is loaded with diffusers' own
`load_lora_weights` (needs peft) and fused (`fuse_lora`: no LoRA matmuls left at run time); the scheduler becomes
LCMScheduler and the call defaults become 4 steps at guidance 1.0. Guidance <= 1 drops classifier-free guidance, so
each UNet call runs batch 1 instead of 2: half the UNet work per step on top of the fewer steps.

`lcm-lora` loads the model family's LCM-LoRA (SD 1.x: latent-consistency/lcm-lora-sdv1-5; hub, cached after the
first download); `lcm-lora=ID|DIR|FILE`
any other. A `random:` model gets a random LoRA of the same shape built offline, so timings stay faithful.
"""

from sdcpu import families
from sdcpu.errors import Skip
from sdcpu.models import schedulers, state

STEPS, GUIDANCE = 4, 1.0


def apply(pipe, step, cpu) -> str:
    family, runtime = families.of(pipe), state.of(pipe).runtime
    if runtime is not state.Runtime.EAGER:
        raise Skip(f"needs the eager torch {family.denoiser.label}, found {runtime.summary}: put lcm-lora before a "
                   "backend step")
    model = state.of(pipe).model
    if step.value is None and model is not None and model.random_weights:
        source = str(random_lora(pipe))
    elif step.value or family.lcm_lora:
        source = step.value or family.lcm_lora
    else:
        raise Skip(f"no LCM-LoRA is known for {family.summary}: give one, lcm-lora=HUB_ID|DIR|FILE")
    try:
        pipe.load_lora_weights(source, adapter_name="lcm", use_safetensors=True)  # never a pickle
    except ImportError as err:
        raise Skip(f"loading a LoRA needs peft ({err})") from None
    except Exception as err:  # noqa: BLE001 -- hub, network or format: all mean the step cannot apply
        raise Skip(f"cannot load a LoRA from {source!r} ({type(err).__name__}; offline?)") from None
    pipe.fuse_lora()
    pipe.unload_lora_weights()  # the fused weights stay; the adapter layers go
    schedulers.set_scheduler(pipe, "lcm")
    state.of(pipe).defaults.update(num_inference_steps=STEPS, guidance_scale=GUIDANCE)
    return (f"LCM-LoRA from {source} fused into the UNet; LCMScheduler, {STEPS} steps at guidance {GUIDANCE} unless a "
            "call says otherwise (guidance <= 1: UNet batch 1, no CFG)")


def random_lora(pipe, rank: int = 4, seed: int = 0):
    """A cached random LoRA (peft layout, rank RANK) on the denoiser's attention projections: LCM-LoRA's shape."""
    from sdcpu.models import random_models

    def write(folder):
        import torch
        from safetensors.torch import save_file

        generator = torch.Generator().manual_seed(seed)
        weights = {}
        denoiser = families.of(pipe).denoiser.attribute
        for name, module in getattr(pipe, denoiser).named_modules():
            if name.endswith(("to_q", "to_k", "to_v", "to_out.0")):
                weights[f"{denoiser}.{name}.lora_A.weight"] = 0.01 * torch.randn(rank, module.in_features,
                                                                                  generator=generator)
                weights[f"{denoiser}.{name}.lora_B.weight"] = 0.01 * torch.randn(module.out_features, rank,
                                                                                  generator=generator)
        save_file(weights, folder / "pytorch_lora_weights.safetensors")

    key = f"random-lora-{state.of(pipe).model.ref}-r{rank}-seed{seed}"
    return random_models.cached_folder(random_models.cache_dir(key), write, "pytorch_lora_weights.safetensors")
