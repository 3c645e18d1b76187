"""A ControlNet beside the `openvino` step's UNet. The UNet's IR takes no residuals, so a second IR of it that does
(`unet_controlled.xml` beside the first: the family's denoiser inputs, then the ControlNet's down-block residuals and
its mid-block one) is converted the first time a control is asked for, from the model's own fp32 UNet read again from
its diffusers folder (the step dropped the torch module once converted; a single-file checkpoint has no folder here:
refused with the reason), and compiled per shape like the first. The ControlNet itself runs in eager torch; its
residuals go to that IR. Calls without a control run the first IR, untouched.

Refused, with the reason: a recipe step that changed the UNet before the backend converted it (lcm-lora fused, bf16
cast: sdcpu.pipeline.control.refusal): the second IR, converted from the model's files, would not have it; and a LoRA
set on the UNet (`check`: its deltas edit the first IR's compiled models only).
"""

import torch

from sdcpu import families, models
from sdcpu.backends import openvino
from sdcpu.errors import UsageError
from sdcpu.models import state

NAME = "unet_controlled"


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


def attach(pipe, controlnet, unet=None) -> None:
    """Give PIPE's OpenVINO UNet stand-in its controlled IR (converted once, then read), for CONTROLNET's residuals;
    UNET: the model's torch UNet where the caller has read it already."""
    stand_in = pipe.unet
    if getattr(stand_in, "controlled", None) is not None:
        return
    family = families.of(pipe)
    switch = state.of(pipe).lora  # OpenVINO's LoRA switch, where a set was ever used: its base is the LoRA-free run
    base = switch.base.get(family.denoiser.attribute, stand_in.run) if switch is not None else stand_in.run
    path = base.path.with_name(f"{NAME}.xml")
    if not path.is_file():
        unet = unet or torch_unet(pipe)
        example = family.example_inputs(unet.config, 2, (openvino.EXAMPLE_LATENT,) * 2, torch.float32)
        entry = Controlled(unet, family.denoiser)
        openvino.convert(unet, NAME, path, family, traced=(entry, (*example, *residuals(controlnet, family, example,
                                                                                          pipe.vae_scale_factor))))
        del unet, entry
    stand_in.controlled = openvino.Compiled(base.core, path, base.config, NAME)
    stand_in.controlled_base = base  # a LoRA set swaps `run`: the controlled IR has none of it


def check(pipe) -> None:
    """Refuse a controlled call where a LoRA set runs on PIPE's UNet: its deltas are in that set's compiled models, not
    in the controlled IR."""
    if pipe.unet.run is not pipe.unet.controlled_base:
        raise UsageError("a ControlNet and LoRAs together on OpenVINO are not supported (the LoRAs edit the UNet's "
                         "first IR only): use one of them, or --recipe baseline")


def residuals(controlnet, family, example: tuple, scale: int) -> tuple:
    """CONTROLNET's residuals for the denoiser inputs EXAMPLE: the example the controlled IR is traced with."""
    args, kwargs = family.denoiser.call_arguments(example)
    sample = example[0]
    cond = torch.zeros(sample.shape[0], 3, sample.shape[-2] * scale, sample.shape[-1] * scale)
    with torch.no_grad():
        down, mid = controlnet(*args, **kwargs, controlnet_cond=cond, return_dict=False)
    return (*down, mid)
