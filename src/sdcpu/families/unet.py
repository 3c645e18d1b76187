"""What the UNet families share (SD 1.x/2.x in sd.py, SDXL in sdxl.py): a diffusers UNet2DConditionModel denoising an
AutoencoderKL's latents, conditioned by CLIP text encoders. The inpainting test, the latent multiple, the seeded parts
of a random build, the LoRA loading and the FLOP count are the same for both; each family module keeps what differs
(its architectures, example inputs, components, single-file layout, defaults)."""

from dataclasses import dataclass

from sdcpu.families import base
from sdcpu.families.base import Family


@dataclass(frozen=True)
class UNetFamily(Family):
    def inpainting(self, pipe) -> bool:
        """Latents, mask and masked-image latents in: 2 x the latent channels + 1 (9 for 4-channel latents)."""
        return pipe.unet.config.in_channels == 2 * pipe.vae.config.latent_channels + 1

    def latent_multiple(self, config) -> int:
        """The UNet halves the latent once per down block but the last."""
        return 2 ** (len(config.block_out_channels) - 1)

    def random_pipeline(self, arch: str, seed: int, extra):
        """The pipeline of random:ARCH with weights seeded by SEED (the inpainting one where its UNet takes 9
        channels): the UNet, the VAE, a CLIPTextModel text encoder and CLIP's tokenizer, the scheduler, and
        EXTRA(seeded, components), the family's own other parts. `seeded(offset, make)` makes a component with its
        own seeded random stream, independent of build order."""
        import diffusers
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        from sdcpu.families import clip

        spec = self.archs[arch]
        parts = spec.components

        def seeded(offset, make):
            return base.seeded(seed, offset, make)

        task = "inpaint" if parts["unet"].get("in_channels") == 9 else "txt2img"
        return getattr(diffusers, self.pipelines[task])(
            unet=seeded(1, lambda: UNet2DConditionModel(**parts["unet"])),
            vae=seeded(2, lambda: AutoencoderKL(**parts["vae"])),
            text_encoder=seeded(3, lambda: CLIPTextModel(clip.text_config(**parts["text_encoder"]))),
            tokenizer=clip.tokenizer(),
            scheduler=spec.make_scheduler(),
            **extra(seeded, parts),
        )

    def lora_state(self, pipeline_class, source, denoiser_config, **kwargs) -> tuple[dict, dict]:
        """unet_config, as load_lora_weights passes it: kohya files in the original (sgm) UNet layout, as SDXL's, are
        renamed to diffusers' blocks from it."""
        state_dict, alphas, metadata = pipeline_class.lora_state_dict(
            source, return_lora_metadata=True, unet_config=denoiser_config, **kwargs)
        return state_dict, {"network_alphas": alphas, "metadata": metadata}

    def load_lora(self, pipeline_class, state_dict, models, **options) -> None:
        """As diffusers' LoRA loaders do: the UNet, then each text encoder under its own prefix (`text_encoder`,
        SDXL's `text_encoder_2`; kohya's lora_te1_/lora_te2_ are renamed to these by lora_state_dict)."""
        pipeline_class.load_lora_into_unet(state_dict, unet=models["unet"], **options)
        for name in self.text_encoders:
            pipeline_class.load_lora_into_text_encoder(state_dict, text_encoder=models[name], prefix=name, **options)

    def flops(self, config, batch, latent) -> int:
        """Attention runs through the math processor: torch's flop counter does not count SDPA kernels."""
        import torch
        from diffusers import UNet2DConditionModel
        from diffusers.models.attention_processor import AttnProcessor
        from torch.utils.flop_counter import FlopCounterMode

        with torch.device("meta"):
            unet = UNet2DConditionModel(**{k: v for k, v in dict(config).items() if not k.startswith("_")})
            unet.set_attn_processor(AttnProcessor())
            args, kwargs = self.denoiser.call_arguments(self.example_inputs(unet.config, batch, latent, torch.float32))
            with FlopCounterMode(display=False) as counter, torch.inference_mode():
                unet(*args, **kwargs)
        return counter.get_total_flops()
