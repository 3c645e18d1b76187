"""Pipeline-facing stand-ins for the denoiser, the VAE and the text encoder when another runtime runs them (OpenVINO,
a quantized exported graph): each keeps what the diffusers pipeline reads (config, dtype, device, call signature,
return type) and hands tensors to RUN, a callable returning a tuple of tensors. The denoiser's tensor inputs are its
family's (sdcpu.families.base.Denoiser); any other option is refused rather than silently ignored.
"""

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from transformers.modeling_outputs import BaseModelOutputWithPooling


class Entry(torch.nn.Module):
    """A module's pipeline-facing call with tensor inputs and a tuple output: what a converter traces or exports.
    SIGNATURE (a family's Denoiser) says which inputs travel in `added_cond_kwargs`."""

    def __init__(self, module, method="forward", signature=None):
        super().__init__()
        self.module, self.method, self.signature = module, method, signature

    def forward(self, *inputs):
        args, kwargs = self.signature.call_arguments(inputs) if self.signature else (inputs, {})
        return getattr(self.module, self.method)(*args, **kwargs, return_dict=False)


def refuse(what: str, **options):
    """Raise for any option the converted model does not take, rather than silently ignore it."""
    given = [name for name, value in options.items() if value is not None and value is not False]
    if given:
        raise NotImplementedError(f"the {what} does not support {', '.join(given)}")


class Component:
    """What StableDiffusionPipeline reads of any component: config, dtype, device."""

    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, run, config):
        self.run, self.config = run, config

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


class Denoiser(Component):
    """The family's denoiser (SD's UNet): its tensor inputs, in the order SIGNATURE names them, handed to RUN."""

    def __init__(self, run, config, signature, latent_multiple: int):
        super().__init__(run, config)
        self.signature, self.latent_multiple = signature, latent_multiple

    def forward(self, sample, timestep, *args, return_dict=True, **kwargs):
        inputs, rest = self.signature.bind(sample, timestep, args, kwargs)
        refuse(self.signature.label, **rest)
        factor = self.latent_multiple  # converted for latents it halves evenly
        if sample.shape[-2] % factor or sample.shape[-1] % factor:
            raise ValueError(f"the {self.signature.label} needs latent height and width divisible by {factor}, got "
                             f"{tuple(sample.shape[-2:])}")
        (noise,) = self.run(*inputs)
        return UNet2DConditionOutput(sample=noise) if return_dict else (noise,)


class VAE(Component):
    """The VAE's decoder, and its encoder where ENCODE runs it (img2img and inpainting call it; it returns the
    latent distribution's moments, as AutoencoderKL's quant_conv gives them)."""

    def __init__(self, run, config, encode=None):
        super().__init__(run, config)
        self.encode_run = encode

    use_slicing = False

    def enable_slicing(self):
        """Decode a batch one image at a time (AutoencoderKL's option, same name): its memory is one image's."""
        self.use_slicing = True

    def decode(self, latents, return_dict=True, generator=None):
        if self.use_slicing:
            image = torch.cat([self.run(one)[0] for one in latents.split(1)])
        else:
            (image,) = self.run(latents)
        return DecoderOutput(sample=image) if return_dict else (image,)

    def encode(self, images, return_dict=True):
        if self.encode_run is None:
            raise NotImplementedError("this VAE stand-in has no encoder: text-to-image only")
        (moments,) = self.encode_run(images)
        latent_dist = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=latent_dist) if return_dict else (latent_dist,)


class Moments(torch.nn.Module):
    """AutoencoderKL's encoder path down to the latent distribution's moments: a tensor, so it can be traced."""

    def __init__(self, vae):
        super().__init__()
        self.encoder, self.quant_conv = vae.encoder, vae.quant_conv

    def forward(self, images):
        moments = self.encoder(images)
        return (moments if self.quant_conv is None else self.quant_conv(moments),)


class TextEncoder(Component):
    def forward(self, input_ids, attention_mask=None, output_hidden_states=None):
        refuse("text encoder (last layer only: no clip_skip)", attention_mask=attention_mask,
               output_hidden_states=output_hidden_states)
        hidden, pooled = self.run(input_ids)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)
