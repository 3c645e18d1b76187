"""The `deepcache=N` step: DeepCache (Ma et al., 2023) on diffusers' UNet2DConditionModel.

Adjacent denoising steps change the UNet's deep, low-resolution features very little. Every N-th UNet call runs the
whole UNet and keeps the features entering its last up block; the N-1 calls in between run only the shallow branch
(conv_in, the first down block, the last up block, the output layers) on top of the kept features. The shallow branch
costs a fraction of a full call, so the UNet's share of an image shrinks by about (N - 1)/N of that difference; the
image drifts more as N grows (the bench reports PSNR/SSIM against the exact image). `deepcache=1` is the exact UNet.

The cache is reset whenever the pipeline's scheduler starts a new schedule (each pipeline call sets its timesteps), so
every image starts with a full call. The UNet runs eagerly: a recipe with deepcache takes no backend step (one after
it is skipped). The UNet's added conditioning (`added_cond_kwargs`: SDXL's pooled text embedding and time ids)
reaches both branches: the shallow one adds it to the timestep embedding as the full forward does.
"""

from diffusers import UNet2DConditionModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from sdcpu import families
from sdcpu.errors import Skip


def apply(pipe, step, cpu) -> str:
    unet = getattr(pipe, families.of(pipe).denoiser.attribute)
    if type(unet) is not UNet2DConditionModel:
        raise Skip(f"needs diffusers' eager UNet2DConditionModel, found {type(unet).__name__} "
                   "(a backend step ran first: deepcache runs without one)")
    shallow = 1 + len(unet.down_blocks[0].resnets)  # conv_in's output and the first down block's layers
    if len(unet.up_blocks[-1].resnets) > shallow:
        raise Skip("this UNet's last up block takes skip connections from below its first down block")
    if unet.config.addition_embed_type == "image_hint":  # its added embedding also returns a hint for down blocks
        raise Skip("the shallow branch does not carry an image_hint UNet's hint")
    unet.forward = DeepCache(pipe, unet, step.value)
    return (f"full UNet every {step.value} calls, the shallow branch (first down block, last up block) on cached "
            f"deep features in between" if step.value > 1 else "deepcache=1: every call runs the full UNet (exact)")


class DeepCache:
    """The UNet's forward, with the deep features of its last full call kept for the shallow calls that follow."""

    def __init__(self, pipe, unet, interval: int):
        self.pipe, self.unet, self.interval = pipe, unet, interval
        self.schedule, self.calls, self.deep, self.capturing = None, 0, None, False
        unet.up_blocks[-1].register_forward_pre_hook(self._capture, with_kwargs=True)

    def _capture(self, module, args, kwargs):
        if self.capturing:
            self.deep = kwargs["hidden_states"]

    def __call__(self, sample, timestep, encoder_hidden_states, return_dict=True, added_cond_kwargs=None, **extras):
        given = sorted(name for name, value in extras.items() if value is not None)
        if given:  # the shallow branch would silently drop them
            raise NotImplementedError(f"the deepcache step does not support UNet inputs {', '.join(given)}")
        if self.pipe.scheduler.timesteps is not self.schedule:  # a new image: start with a full call
            self.schedule, self.calls, self.deep = self.pipe.scheduler.timesteps, 0, None
        full = self.calls % self.interval == 0 or self.deep is None
        self.calls += 1
        if full:
            self.capturing = True
            try:
                (noise,) = UNet2DConditionModel.forward(self.unet, sample, timestep, encoder_hidden_states,
                                                        added_cond_kwargs=added_cond_kwargs, return_dict=False)
            finally:
                self.capturing = False
        else:
            noise = self.shallow(sample, timestep, encoder_hidden_states, added_cond_kwargs)
        return UNet2DConditionOutput(sample=noise) if return_dict else (noise,)

    def shallow(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None):
        """UNet2DConditionModel.forward for SD's and SDXL's configurations, down to the first down block and back up
        from the kept features through the last up block."""
        unet = self.unet
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
        aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                                 added_cond_kwargs=added_cond_kwargs or {})
        if aug is not None:  # SDXL's text_time: the pooled text embedding and the time ids
            emb = emb + aug
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        states = unet.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states,
                                                    added_cond_kwargs=added_cond_kwargs)
        hidden = unet.conv_in(sample)
        first, last = unet.down_blocks[0], unet.up_blocks[-1]
        cross = {"encoder_hidden_states": states} if getattr(first, "has_cross_attention", False) else {}
        _, skips = first(hidden_states=hidden, temb=emb, **cross)
        skips = ((hidden,) + skips)[: len(last.resnets)]  # what the last up block takes from the full call's list
        cross = {"encoder_hidden_states": states} if getattr(last, "has_cross_attention", False) else {}
        hidden = last(hidden_states=self.deep, temb=emb, res_hidden_states_tuple=skips, **cross)
        if unet.conv_norm_out is not None:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        return unet.conv_out(hidden)
