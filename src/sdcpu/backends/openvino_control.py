"""ControlNets on the `openvino` step. Two IRs beside the step's own:
- the UNet taking a ControlNet's residuals (`unet_controlled.xml` beside the UNet's IR: the family's denoiser inputs,
  then the ControlNet's down-block residuals and its mid-block one), converted the first time a control is asked for
  from the model's own fp32 UNet read again from its diffusers folder (the step dropped the torch module once
  converted; a single-file checkpoint has no folder here: refused with the reason). Calls without a control run the
  first IR, untouched.
- each ControlNet (`controlnet.xml` under $SDCPU_HOME/openvino/<key of its own config and weights>/: the family's
  denoiser inputs and the control map in, its residuals out, unscaled), converted once; its torch module is dropped
  and a stand-in (sdcpu.backends.components.ControlNet) takes its place in the pipeline, applying the call's scale.
Both are compiled per shape with the step's precision, like the UNet's IR, and kept with the UNet's compiled models
under the `release` step (the denoiser's part).

Refused, with the reason: a recipe step that changed the UNet before the backend converted it (lcm-lora fused, bf16
cast: sdcpu.pipeline.control.refusal): the second IR, converted from the model's files, would not have it; and a LoRA
set on the UNet (`check`: its deltas edit the first IR's compiled models only).
"""

import torch

from sdcpu import families, models
from sdcpu.backends import components, openvino
from sdcpu.errors import UsageError
from sdcpu.models import state
from sdcpu.system.home import sdcpu_home

NAME, CONTROLNET = "unet_controlled", "controlnet"  # the IRs' names


class Controlled(torch.nn.Module):
    """The UNet's call with the ControlNet's residuals as inputs after the family's: what is traced."""

    def __init__(self, unet, signature):
        super().__init__()
        self.module, self.signature = unet, signature  # `module`: the IR's weight names, as Entry's

    def forward(self, *inputs):
        count = len(self.signature.inputs)
        args, kwargs = self.signature.call_arguments(inputs[:count])
        residuals = inputs[count:]
        return self.module(*args, **kwargs, down_block_additional_residuals=tuple(residuals[:-1]),
                           mid_block_additional_residual=residuals[-1], return_dict=False)


def torch_unet(pipe):
    """PIPE's model's own UNet as a float32 torch module, read again from its diffusers folder."""
    from diffusers import UNet2DConditionModel

    spec = state.of(pipe).model
    config = spec and models.local_file(spec, "unet/config.json")
    if config is None:
        raise UsageError("a ControlNet on OpenVINO converts the UNet again from the model's diffusers folder, and this "
                         "model has none here (a single-file checkpoint, or a pipeline made in memory): use "
                         "--recipe baseline")
    return UNet2DConditionModel.from_pretrained(config.parent, torch_dtype=torch.float32).eval()


class Residuals(torch.nn.Module):
    """A ControlNet's call with tensor inputs (the family's denoiser inputs, then the control map) and its residuals
    out flat, unscaled: what is traced."""

    def __init__(self, controlnet, signature):
        super().__init__()
        self.module, self.signature = controlnet, signature  # `module`: the IR's weight names, as Entry's

    def forward(self, *inputs):
        args, kwargs = self.signature.call_arguments(inputs[:-1])
        down, mid = self.module(*args, **kwargs, controlnet_cond=inputs[-1], return_dict=False)
        return (*down, mid)


def attach(pipe, controlnet, unet=None) -> components.ControlNet:
    """CONTROLNET (a torch ControlNetModel) converted for PIPE's OpenVINO UNet, which gets its controlled IR if it has
    none yet (both converted once, then read): the stand-in running it. UNET: the model's torch UNet where the caller
    has read it already."""
    import openvino as ov

    family, stand_in = families.of(pipe), pipe.unet
    example = _example(controlnet, family, pipe.vae_scale_factor)
    if stand_in.controlled is None:
        switch = state.of(pipe).lora  # OpenVINO's LoRA switch, where a set was ever used: its base is the LoRA-free run
        base = switch.base.get(family.denoiser.attribute, stand_in.run) if switch is not None else stand_in.run
        path = base.path.with_name(f"{NAME}.xml")
        if not path.is_file():
            unet = unet or torch_unet(pipe)
            with torch.no_grad():
                residuals = Residuals(controlnet, family.denoiser)(*example)
            batch, side = family.traced
            unet_example = family.example_inputs(unet.config, batch, (side, side), torch.float32)
            openvino.convert(unet, NAME, path, family, traced=(Controlled(unet, family.denoiser),
                                                               (*unet_example, *residuals)))
            del unet
        stand_in.controlled = openvino.Compiled(base.core, path, base.config, NAME)
        stand_in.controlled_base = base  # a LoRA set swaps `run`: the controlled IR has none of it
    key = openvino.cache_key({CONTROLNET: controlnet}, ov.__version__)  # its own weights: any model's ControlNet
    path = sdcpu_home() / "openvino" / key / f"{CONTROLNET}.xml"
    if not path.is_file():
        openvino.convert(controlnet, CONTROLNET, path, family, traced=(Residuals(controlnet, family.denoiser), example))
    unet_run = stand_in.controlled  # the same core and precision
    made = components.ControlNet(openvino.Compiled(unet_run.core, path, unet_run.config, CONTROLNET),
                                 controlnet.config, family.denoiser)
    if stand_in.phases is not None:  # the `release` step: the denoiser's part, dropped and compiled again with it
        made.phases, made.part = stand_in.phases, stand_in.part
        stand_in.phases.add(stand_in.part, made.release)
    return made


def check(pipe) -> None:
    """Refuse a controlled call where a LoRA set runs on PIPE's UNet: its deltas are in that set's compiled models, not
    in the controlled IR."""
    if pipe.unet.run is not pipe.unet.controlled_base:
        raise UsageError("a ControlNet and LoRAs together on OpenVINO are not supported (the LoRAs edit the UNet's "
                         "first IR only): use one of them, or --recipe baseline")


def _example(controlnet, family, scale: int) -> tuple:
    """CONTROLNET's example inputs: FAMILY's denoiser inputs at the traced latent size (the latents alone: an
    inpainting UNet's ControlNet reads 4 channels), then a control map SCALE times their size."""
    batch, side = family.traced
    example = family.example_inputs(controlnet.config, batch, (side, side), torch.float32)
    return (*example, torch.zeros(batch, controlnet.config.conditioning_channels, side * scale, side * scale))
