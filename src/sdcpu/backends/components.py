"""Pipeline-facing stand-ins for the denoiser, the VAE, the text encoder and a ControlNet when another runtime runs
them (OpenVINO, a quantized exported graph): each keeps what the diffusers pipeline reads (config, dtype, device, call
signature, return type) and hands tensors to RUN, a callable returning a tuple of tensors. The denoiser's tensor inputs
are its family's (sdcpu.families.base.Denoiser); any other option is refused rather than silently ignored.
"""

import contextlib
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.controlnets.controlnet import ControlNetModel, ControlNetOutput
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from transformers.modeling_outputs import BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.models.clip.modeling_clip import CLIPTextModelOutput


@dataclass(frozen=True)
class TextKind:
    """What a text encoder class returns: its output class, that output's tensors a stand-in carries, in order (its
    return_dict=False tuple without hidden_states), and whether it takes the prompt's attention mask (an LLM reading
    a padded prompt does: its padding tokens' states depend on it)."""

    output: type
    fields: tuple[str, ...]
    masked: bool = False


# A text encoder's class -> its kind: what its stand-in returns. The one place a text encoder's kind is told apart.
TEXT_OUTPUTS = {
    "CLIPTextModel": TextKind(BaseModelOutputWithPooling, ("last_hidden_state", "pooler_output")),
    "CLIPTextModelWithProjection": TextKind(CLIPTextModelOutput, ("text_embeds", "last_hidden_state")),
    # FLUX.2's Qwen3, cut by its family after the deepest layer read (its logits are the last layer's states): the
    # pipeline reads hidden states only
    "Qwen3ForCausalLM": TextKind(CausalLMOutputWithPast, (), masked=True),
}


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


class HiddenStates(torch.nn.Module):
    """A text encoder's call as a pipeline that reads its hidden states makes it (`output_hidden_states=True`: SDXL's
    and FLUX.2's encode_prompt): its output's tensors (KIND's fields), then its hidden states LAYERS, flat; with the
    attention mask as a second input where KIND takes one."""

    def __init__(self, module, kind: TextKind, layers: tuple[int, ...]):
        super().__init__()
        self.module = module  # the same attribute as Entry's: the IR's weight names are `self.module.<layer>.weight`
        self.kind, self.layers = kind, layers

    def forward(self, input_ids, attention_mask=None):
        options = dict(attention_mask=attention_mask, use_cache=False) if self.kind.masked else {}
        output = self.module(input_ids, output_hidden_states=True, **options)
        return (*(output[name] for name in self.kind.fields), *(output.hidden_states[i] for i in self.layers))


class Component:
    """What StableDiffusionPipeline reads of any component: config, dtype, device, and modules() (diffusers' device
    and LoRA-scale helpers walk a component's modules: a stand-in is its only one)."""

    dtype = torch.float32
    device = torch.device("cpu")
    phases = None  # the `release` step's sdcpu.backends.release.Phases: one part of the pipeline compiled at a time
    part = ""  # this component's part there: "text", "denoiser" or "vae"

    def __init__(self, run, config):
        self.run, self.config = run, config

    def __call__(self, *args, **kwargs):
        self.enter()
        return self.forward(*args, **kwargs)

    def enter(self):
        """About to run: under the `release` step, the other parts' compiled models are dropped first."""
        if self.phases is not None:
            self.phases.enter(self.part)

    def release(self):
        """Drop what RUN (and a VAE's encoder) compiled, returning its memory; the next call compiles again."""
        for run in (self.run, getattr(self, "encode_run", None), getattr(self, "controlled", None)):
            if hasattr(run, "release"):
                run.release()

    def modules(self):
        yield self


class Denoiser(Component):
    """The family's denoiser (SD's UNet): its tensor inputs, in the order SIGNATURE names them, handed to RUN."""

    controlled = None  # the run taking a ControlNet's residuals too (sdcpu.backends.openvino_control), once asked for
    controlled_base = None  # the run it was made beside: another (a LoRA set's) has edits it lacks

    def __init__(self, run, config, signature, latent_multiple: int):
        super().__init__(run, config)
        self.signature, self.latent_multiple = signature, latent_multiple
        width = getattr(config, "projection_class_embeddings_input_dim", None)
        if width:  # SDXL's pipelines check the added conditioning's width against add_embedding.linear_1's input
            self.add_embedding = SimpleNamespace(linear_1=SimpleNamespace(in_features=width))

    def forward(self, *args, return_dict=True, **kwargs):
        inputs, rest = self.signature.bind(args, kwargs)
        down, mid = rest.pop("down_block_additional_residuals", None), rest.pop("mid_block_additional_residual", None)
        refuse(self.signature.label, **rest)
        factor, sample = self.latent_multiple, inputs[0]  # converted for latents it halves evenly
        if sample.ndim == 4 and (sample.shape[-2] % factor or sample.shape[-1] % factor):
            raise ValueError(f"the {self.signature.label} needs latent height and width divisible by {factor}, got "
                             f"{tuple(sample.shape[-2:])}")
        if down is None:
            (noise,) = self.run(*inputs)
        elif self.controlled is None or self.run is not self.controlled_base:
            raise NotImplementedError(f"the {self.signature.label} takes a ControlNet's residuals only from "
                                      "sdcpu.pipeline.control, without a LoRA set on OpenVINO")
        else:
            (noise,) = self.controlled(*inputs, *down, mid)
        return UNet2DConditionOutput(sample=noise) if return_dict else (noise,)

    def cache_context(self, name: str):
        """diffusers' CacheMixin context (FLUX.2's pipeline names each transformer call's branch): no cache here."""
        return contextlib.nullcontext()


class ControlNet(Component, ControlNetModel):
    """A ControlNet's stand-in: an instance of ControlNetModel, as diffusers' ControlNet pipelines check, with no
    weights; its inputs (the family's denoiser inputs, then the control map) go to RUN, which returns the residuals
    unscaled, and the call's scale is applied here as ControlNetModel.forward applies it. At scale 0 (a step outside
    the control's guidance start and end) the residuals are zeros of their shapes, without running RUN."""

    def __init__(self, run, config, signature):
        torch.nn.Module.__init__(self)  # not ControlNetModel's: no layers; `config` is ConfigMixin's, read-only
        self.run, self._internal_dict, self.signature = run, config, signature

    def forward(self, *args, controlnet_cond, conditioning_scale=1.0, guess_mode=False, return_dict=True, **kwargs):
        inputs, rest = self.signature.bind(args, kwargs)
        refuse("ControlNet on OpenVINO", **rest)
        inputs = (*inputs, controlnet_cond)
        if conditioning_scale == 0:
            shapes = self.run.output_shapes(tuple(tuple(x.shape) for x in inputs))
            *down, mid = (torch.zeros(shape) for shape in shapes)
        else:
            *down, mid = self.run(*inputs)
            count, pooled = len(down) + 1, self.config.global_pool_conditions
            if guess_mode and not pooled:  # 0.1 to 1.0 from the first residual to the mid block's
                scales = torch.logspace(-1, 0, count) * conditioning_scale
            else:
                scales = [conditioning_scale] * count
            down, mid = [x * scale for x, scale in zip(down, scales)], mid * scales[-1]
        if self.config.global_pool_conditions:  # the residuals averaged over the image
            down, mid = [x.mean(dim=(2, 3), keepdim=True) for x in down], mid.mean(dim=(2, 3), keepdim=True)
        return ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid) if return_dict else (down, mid)


class VAE(Component):
    """The VAE's decoder, and its encoder where ENCODE runs it (img2img and inpainting call it; it returns the
    latent distribution's moments, as AutoencoderKL's quant_conv gives them). BN: the FLUX.2 VAE's batch-norm layer,
    whose statistics its pipeline reads to normalise latents (kept as it is: two 128-wide buffers)."""

    def __init__(self, run, config, encode=None, bn=None):
        super().__init__(run, config)
        self.encode_run = encode
        if bn is not None:
            self.bn = bn.float()

    use_slicing = False

    def to(self, *args, **kwargs):
        """SDXL's img2img and inpainting move a force_upcast VAE to float32 around its encoder and back to the
        pipeline's dtype: float32 on the CPU here (OpenVINO's precision hint, not a torch dtype, sets the compute),
        so that is all it takes; another dtype or device is refused."""
        asked = [a for a in (*args, *kwargs.values()) if a not in (torch.float32, "cpu", torch.device("cpu"))]
        if asked:
            raise NotImplementedError(f"the VAE on OpenVINO runs float32 on the CPU, not {asked}")
        return self

    def enable_slicing(self):
        """Decode a batch one image at a time (AutoencoderKL's option, same name): its memory is one image's."""
        self.use_slicing = True

    def decode(self, latents, return_dict=True, generator=None):
        self.enter()
        if self.use_slicing:
            image = torch.cat([self.run(one)[0] for one in latents.split(1)])
        else:
            (image,) = self.run(latents)
        return DecoderOutput(sample=image) if return_dict else (image,)

    def encode(self, images, return_dict=True):
        if self.encode_run is None:
            raise NotImplementedError("this VAE stand-in has no encoder: text-to-image only")
        self.enter()
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


class Layers:
    """The hidden states of a text encoder that were converted (a family's `text_layers`), indexed as the whole tuple
    is; any other layer (SDXL's clip_skip) is refused."""

    def __init__(self, states: dict):
        self.states = states

    def __getitem__(self, index):
        if index not in self.states:
            raise NotImplementedError(f"the text encoder on OpenVINO has its hidden states {sorted(self.states)} only "
                                      f"(hidden_states[{index}]: no clip_skip)")
        return self.states[index]


class TextEncoder(Component):
    """A text encoder's stand-in returning what its class (KIND, a TEXT_OUTPUTS key) returns. With LAYERS its run also
    gives those hidden states (HiddenStates traced it): the output carries them, for a pipeline that reads them (SDXL,
    FLUX.2); without, a call asking for hidden states (clip_skip) is refused. A kind that takes the attention mask
    gets it as the run's second input (all ones where the call gives none)."""

    def __init__(self, run, config, kind="CLIPTextModel", layers=()):
        super().__init__(run, config)
        self.kind, self.layers = TEXT_OUTPUTS[kind], layers

    def forward(self, input_ids, attention_mask=None, output_hidden_states=None, return_dict=True, use_cache=None):
        kind = self.kind
        if kind.masked:
            inputs = (input_ids, torch.ones_like(input_ids) if attention_mask is None else attention_mask)
        else:
            refuse("text encoder (no attention mask)", attention_mask=attention_mask)
            inputs = (input_ids,)
        if self.layers:
            tensors = self.run(*inputs)
            states = Layers(dict(zip(self.layers, tensors[len(kind.fields):])))
            output = kind.output(**dict(zip(kind.fields, tensors)), hidden_states=states)
        else:
            refuse("text encoder (last layer only: no clip_skip)", output_hidden_states=output_hidden_states)
            output = kind.output(**dict(zip(kind.fields, self.run(*inputs))))
        return output if return_dict else output.to_tuple()
