"""The `tiny-vae` step: the VAE decoder replaced by TAESD (diffusers' AutoencoderTiny, madebyollin's distilled
decoder): a few GFLOP per 512x512 image instead of the SD VAE decoder's ~2500, at a visible cost in fine detail.

`tiny-vae` loads the model family's TAESD (SD 1.x/2.x: madebyollin/taesd; hub, cached after the first download);
`tiny-vae=ID_OR_FOLDER` any other AutoencoderTiny. A `random:` model gets a random-weight TAESD built offline, so
timings stay faithful without a hub.
"""

from sdcpu import families
from sdcpu.errors import Skip
from sdcpu.models import state


def apply(pipe, step, cpu) -> str:
    import torch
    from diffusers import AutoencoderTiny

    from sdcpu.models import random_models

    model = state.of(pipe).model
    if step.value is None and model is not None and model.random_weights:
        source, vae = "random weights (a random: model)", AutoencoderTiny.from_pretrained(
            random_models.ensure_tiny_vae(pipe.vae_scale_factor), local_files_only=True)
    else:
        source = step.value or families.of(pipe).tiny_vae
        if not source:
            raise Skip(f"no TAESD is known for {families.of(pipe).summary}: give one, tiny-vae=HUB_ID|FOLDER")
        try:
            vae = AutoencoderTiny.from_pretrained(source, use_safetensors=True)  # never a pickle
        except Exception as err:  # noqa: BLE001 -- hub, network or format: all mean the step cannot apply
            raise Skip(f"cannot load an AutoencoderTiny from {source!r} ({type(err).__name__}; offline?)") from None
    family = families.of(pipe)
    made = getattr(pipe, family.denoiser.attribute).config.out_channels
    if vae.config.latent_channels != made:
        raise Skip(f"{source} decodes {vae.config.latent_channels}-channel latents, the {family.denoiser.label} makes "
                   f"{made}")
    scale = 2 ** (len(vae.config.decoder_block_out_channels) - 1)
    if scale != pipe.vae_scale_factor:
        raise Skip(f"{source} scales latents by {scale}, this pipeline's VAE by {pipe.vae_scale_factor}")
    dtype = pipe.vae.dtype if isinstance(pipe.vae, torch.nn.Module) else torch.float32
    pipe.register_modules(vae=vae.to(dtype=dtype).eval())
    return f"VAE decoder replaced by TAESD (AutoencoderTiny) from {source}, {dtype}"
