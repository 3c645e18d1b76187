"""Stable Diffusion 1.x and 2.x: a UNet2DConditionModel denoising 4-channel latents of an AutoencoderKL (f8), one
CLIP text encoder (SD 1.x: OpenAI's ViT-L/14; SD 2.x: OpenCLIP's ViT-H/14), 77 tokens.

Random architectures: `sd15` is SD 1.5 exactly (UNet 859.5M, CLIP ViT-L/14, AutoencoderKL f8, PNDM), so its compute
cost is the real model's; `sd-turbo` is SD-Turbo's (SD 2.1's UNet 865.9M with linear projections and 1024-wide
cross-attention, OpenCLIP ViT-H/14 of 23 layers, Euler with trailing timesteps so 1 step is meaningful), run at 1 step
without guidance; `sd15-inpainting` is SD 1.5 inpainting's (a 9-channel UNet input: latents, mask, masked-image
latents); `tiny` (and `tiny-inpainting`) use diffusers' test sizes and build in seconds.
"""

from dataclasses import dataclass

from sdcpu.families import clip
from sdcpu.families.base import Arch, Defaults, Denoiser
from sdcpu.families.unet import UNetFamily

# SD 1.x scheduler config, as shipped in stable-diffusion-v1-5/scheduler/scheduler_config.json.
SD15_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, clip_sample=False, trained_betas=None,
)
# SD-Turbo's: Euler on SD's betas with trailing timestep spacing, so a 1-step schedule starts from pure noise (t=999).
TURBO_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    timestep_spacing="trailing", steps_offset=1, prediction_type="epsilon",
)
VAE = dict(
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215,
)
VIT_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768,
             hidden_act="quick_gelu")
TINY = dict(
    unet=dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, cross_attention_dim=32,
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")),
    vae=dict(block_out_channels=(32, 64), latent_channels=4, sample_size=64,
             down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2),
    text_encoder=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=5, num_attention_heads=4),
)
PNDM = ("PNDMScheduler", SD15_SCHEDULER)

ARCHS = {
    # SD 1.5: UNet2DConditionModel's defaults are SD 1.x's, but for the text-conditioning width.
    "sd15": Arch(dict(unet=dict(sample_size=64, cross_attention_dim=768), vae=VAE, text_encoder=VIT_L), PNDM),
    # SD-Turbo (stabilityai/sd-turbo): SD 2.1's UNet and text encoder (the last of ViT-H's 24 layers is not used).
    "sd-turbo": Arch(
        dict(unet=dict(sample_size=64, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                       use_linear_projection=True),
             vae=VAE,
             text_encoder=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                               projection_dim=512, hidden_act="gelu")),
        ("EulerDiscreteScheduler", TURBO_SCHEDULER),
    ),
    # SD 1.5 inpainting (stable-diffusion-v1-5/stable-diffusion-inpainting): a 9-channel UNet input (latents, the
    # mask, the masked image's latents).
    "sd15-inpainting": Arch(dict(unet=dict(sample_size=64, cross_attention_dim=768, in_channels=9), vae=VAE,
                                 text_encoder=VIT_L), PNDM),
    # diffusers' own fast-test sizes (tests/pipelines/stable_diffusion), with CLIP's real vocabulary.
    "tiny": Arch(TINY, PNDM),
    "tiny-inpainting": Arch({**TINY, "unet": {**TINY["unet"], "in_channels": 9}}, PNDM),
}


@dataclass(frozen=True)
class StableDiffusion(UNetFamily):
    def example_inputs(self, config, batch, latent, dtype, generator=None) -> tuple:
        import torch

        sample = torch.randn(batch, config.in_channels, *latent, generator=generator).to(dtype)
        context = torch.randn(batch, self.tokens, config.cross_attention_dim, generator=generator).to(dtype)
        return sample, torch.full((batch,), 500.0), context

    def build(self, arch: str, seed: int):
        """A StableDiffusionPipeline of ARCH (a StableDiffusionInpaintPipeline where its UNet takes 9 channels) with
        seeded random weights and no safety checker (it would flag noise)."""
        return self.random_pipeline(arch, seed, lambda seeded, parts: dict(
            safety_checker=None, feature_extractor=None, requires_safety_checker=False))

    def save(self, pipe, folder) -> None:
        super().save(pipe, folder)
        for name in self.text_encoders:
            clip.prefix_text_model(folder / name)

    def skeletons(self, pipe) -> dict:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        return {"unet": UNet2DConditionModel.from_config(pipe.unet.config),
                "text_encoder": CLIPTextModel(pipe.text_encoder.config)}

    def original_state_dict(self, folder) -> dict:
        from sdcpu.families import sd_layout

        return sd_layout.original_state_dict(folder)


FAMILY = StableDiffusion(
    name="sd",
    summary="Stable Diffusion 1.x and 2.x (UNet, one CLIP text encoder, 4-channel f8 latents)",
    pipelines={"txt2img": "StableDiffusionPipeline", "img2img": "StableDiffusionImg2ImgPipeline",
               "inpaint": "StableDiffusionInpaintPipeline"},
    control_pipelines={"txt2img": "StableDiffusionControlNetPipeline",
                       "img2img": "StableDiffusionControlNetImg2ImgPipeline",
                       "inpaint": "StableDiffusionControlNetInpaintPipeline"},
    controlnets={"canny": "lllyasviel/control_v11p_sd15_canny", "depth": "lllyasviel/control_v11f1p_sd15_depth"},
    denoiser=Denoiser(),
    text_encoders=("text_encoder",),
    tokens=clip.MAX_TOKENS,
    defaults=Defaults(steps=20, guidance=7.5, width=512, height=512),
    tiny_vae="madebyollin/taesd",
    lcm_lora="latent-consistency/lcm-lora-sdv1-5",
    # A1111's "Approx cheap" (modules/sd_vae_approx.py), fitted on SD 1.x latents
    latent_rgb=((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473)),
    archs=ARCHS,
    single_file_configs={"stable-diffusion-v1-5/stable-diffusion-v1-5": "sd15", "runwayml/stable-diffusion-v1-5": "sd15"},
    int8_memory_gib=11,  # quantizing the SD 1.5 UNet: child 6.1 + parent 4.4 GiB peaks, measured
    parameters={"text": 123_060_480, "denoiser": 859_520_964, "decoder": 83_653_863},  # random:sd15, SD 1.5's
)
