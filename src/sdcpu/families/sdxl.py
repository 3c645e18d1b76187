"""Stable Diffusion XL: a UNet2DConditionModel with `text_time` added conditioning denoising 4-channel latents of an
AutoencoderKL (f8), two CLIP text encoders whose penultimate hidden states are concatenated (OpenAI's ViT-L/14, 768
wide, and OpenCLIP's ViT-bigG/14, 1280 wide: 2048) and the bigG encoder's pooled, projected output (1280) with six
micro-conditioning ids (original size, crop corner, target size) as the added inputs; 77 tokens.

Random architectures (the configs of ../shared/models.md sections 1-3, checked against diffusers 0.42.1):
`sdxl` is SDXL base 1.0 exactly (UNet 2,567,463,684 parameters, text encoders 123,060,480 + 694,659,840, VAE
83,653,863, Euler with leading spacing); `sdxl-turbo` is SDXL-Turbo's (the same networks, its UNet's sample size 64:
512 pixels, Euler Ancestral with trailing timesteps so 1 step starts from pure noise), run at 1 step without guidance;
`sdxl-inpainting` is diffusers' SDXL inpainting 0.1 (a 9-channel UNet input); `tiny-sdxl` (and `tiny-sdxl-inpainting`,
`tiny-sdxl-turbo`) use diffusers' own SDXL fast-test sizes (tests/pipelines/stable_diffusion_xl) with CLIP's real
vocabulary and text encoders of two widths (see TINY), and build in about a second.

Request defaults are decided here once, from the scheduler (`scheduler_defaults`): a trailing-spacing schedule is a distilled
few-step model's (SDXL-Turbo: 512x512, 1 step, guidance 0), any other is SDXL base's (1024x1024, 25 Euler steps,
guidance 5.0: diffusers' guidance; 25 rather than the pipeline's 50 because Euler's images change little past 25 steps
in common SDXL use (A1111 and ComfyUI default to 20) and each step costs seconds on a CPU).
"""

from dataclasses import dataclass

from sdcpu.families import clip
from sdcpu.families.base import Arch, Defaults, Denoiser
from sdcpu.families.unet import UNetFamily

# SDXL base 1.0's scheduler_config.json (models.md section 1)
EULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    prediction_type="epsilon", interpolation_type="linear", timestep_spacing="leading", steps_offset=1,
    use_karras_sigmas=False, trained_betas=None, clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True,
    sample_max_value=1.0,
)
# SDXL-Turbo's: Euler Ancestral, trailing spacing (models.md section 2)
TURBO_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    prediction_type="epsilon", timestep_spacing="trailing", steps_offset=1, trained_betas=None,
)
UNET = dict(  # SDXL base 1.0's unet/config.json; the rest are UNet2DConditionModel's defaults
    sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280), layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    use_linear_projection=True, addition_embed_type="text_time", addition_embed_type_num_heads=64,
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)
VAE = dict(  # SDXL's vae/config.json: SD's VAE with its own scaling factor, upcast in fp16
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=1024,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.13025,
    force_upcast=True,
)
VIT_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768,
             hidden_act="quick_gelu")
BIG_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
             projection_dim=1280, hidden_act="gelu")
FULL = dict(unet=UNET, vae=VAE, text_encoder=VIT_L, text_encoder_2=BIG_G)
# diffusers' test encoders are both 32 wide; here they are 16 and 48 (the same 64-wide states, the same 32-wide pooled
# output: the UNet is the test's own), because diffusers' single-file loader tells SDXL's two encoders apart by their
# widths (768 and 1280) and would load the first one's weights into both where they are equal.
TINY_TEXT = dict(intermediate_size=37, num_hidden_layers=5, num_attention_heads=4, projection_dim=32,
                 hidden_act="gelu")
TINY = dict(  # diffusers' StableDiffusionXLPipelineFastTests.get_dummy_components, but for the encoders' widths
    unet=dict(block_out_channels=(2, 4), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
              use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
              transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
              cross_attention_dim=64, norm_num_groups=1),
    vae=dict(block_out_channels=(32, 64), latent_channels=4, sample_size=128,
             down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2),
    text_encoder={**TINY_TEXT, "hidden_size": 16},
    text_encoder_2={**TINY_TEXT, "hidden_size": 48},
)
TINY_EULER = ("EulerDiscreteScheduler", dict(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                             beta_schedule="scaled_linear", timestep_spacing="leading"))


def _inpainting(components: dict) -> dict:
    return {**components, "unet": {**components["unet"], "in_channels": 9}}


ARCHS = {
    "sdxl": Arch(FULL, ("EulerDiscreteScheduler", EULER)),
    # SDXL-Turbo (stabilityai/sdxl-turbo): SDXL's networks, trained at 512 pixels (sample_size 64: inferred from the
    # pipeline's documented 512x512 default, which is sample_size x 8).
    "sdxl-turbo": Arch({**FULL, "unet": {**UNET, "sample_size": 64}},
                       ("EulerAncestralDiscreteScheduler", TURBO_SCHEDULER)),
    # diffusers/stable-diffusion-xl-1.0-inpainting-0.1: base's networks, a 9-channel UNet input
    "sdxl-inpainting": Arch(_inpainting(FULL), ("EulerDiscreteScheduler", EULER)),
    "tiny-sdxl": Arch(TINY, TINY_EULER),
    "tiny-sdxl-inpainting": Arch(_inpainting(TINY), TINY_EULER),
    "tiny-sdxl-turbo": Arch(TINY, ("EulerAncestralDiscreteScheduler", TURBO_SCHEDULER)),
}

BASE_DEFAULTS = Defaults(steps=25, guidance=5.0, width=1024, height=1024)
TURBO_DEFAULTS = Defaults(steps=1, guidance=0.0, width=512, height=512)


@dataclass(frozen=True)
class StableDiffusionXL(UNetFamily):
    def distilled(self, scheduler_config) -> bool:
        """Whether a model with SCHEDULER_CONFIG is a few-step distilled one (SDXL-Turbo): its schedule's timesteps
        trail, so one step starts from pure noise. The one place SDXL's base and Turbo defaults are told apart."""
        return dict(scheduler_config).get("timestep_spacing") == "trailing"

    def scheduler_defaults(self, scheduler_config) -> Defaults:
        return TURBO_DEFAULTS if self.distilled(scheduler_config) else self.defaults

    def example_inputs(self, config, batch, latent, dtype, generator=None) -> tuple:
        """Latents, timestep, the two encoders' concatenated states (cross_attention_dim wide), the pooled text
        embedding and the six time ids: widths from CONFIG (projection_class_embeddings_input_dim = pooled width +
        6 x addition_time_embed_dim)."""
        import torch

        ids = 6 * config.addition_time_embed_dim
        pooled = config.projection_class_embeddings_input_dim - ids
        sample = torch.randn(batch, config.in_channels, *latent, generator=generator).to(dtype)
        context = torch.randn(batch, self.tokens, config.cross_attention_dim, generator=generator).to(dtype)
        embeds = torch.randn(batch, pooled, generator=generator).to(dtype)
        side = latent[0] * 8
        time_ids = torch.tensor([[side, latent[1] * 8, 0, 0, side, latent[1] * 8]], dtype=dtype).expand(batch, 6)
        return sample, torch.full((batch,), 500.0), context, embeds, time_ids.contiguous()

    def build(self, arch: str, seed: int):
        """A StableDiffusionXLPipeline of ARCH (an inpainting one where its UNet takes 9 channels) with seeded random
        weights, both tokenizers built offline (tokenizer_2 pads with `!`, as SDXL's own), no watermarker."""
        from transformers import CLIPTextModelWithProjection

        return self.random_pipeline(arch, seed, lambda seeded, parts: dict(
            text_encoder_2=seeded(5, lambda: CLIPTextModelWithProjection(clip.text_config(**parts["text_encoder_2"]))),
            tokenizer_2=clip.tokenizer(pad="!"), add_watermarker=False))

    def save(self, pipe, folder) -> None:
        super().save(pipe, folder)
        clip.prefix_text_model(folder / "text_encoder")  # CLIPTextModelWithProjection keeps its own prefix

    def skeletons(self, pipe) -> dict:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        return {"unet": UNet2DConditionModel.from_config(pipe.unet.config),
                "text_encoder": CLIPTextModel(pipe.text_encoder.config),
                "text_encoder_2": CLIPTextModelWithProjection(pipe.text_encoder_2.config)}

    def original_state_dict(self, folder) -> dict:
        from sdcpu.families import sdxl_layout

        return sdxl_layout.original_state_dict(folder)

    def checkpoint_arch(self, checkpoint) -> str | None:
        from sdcpu.families import sdxl_layout

        return sdxl_layout.arch_of(checkpoint, self.archs)


FAMILY = StableDiffusionXL(
    name="sdxl",
    summary="Stable Diffusion XL (UNet with text_time conditioning, CLIP ViT-L + OpenCLIP ViT-bigG, 4-channel f8 "
            "latents)",
    pipelines={"txt2img": "StableDiffusionXLPipeline", "img2img": "StableDiffusionXLImg2ImgPipeline",
               "inpaint": "StableDiffusionXLInpaintPipeline"},
    control_pipelines={"txt2img": "StableDiffusionXLControlNetPipeline",
                       "img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
                       "inpaint": "StableDiffusionXLControlNetInpaintPipeline"},
    controlnets={"canny": "diffusers/controlnet-canny-sdxl-1.0", "depth": "diffusers/controlnet-depth-sdxl-1.0"},
    denoiser=Denoiser(inputs=("sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"),
                      added=("text_embeds", "time_ids")),
    text_encoders=("text_encoder", "text_encoder_2"),
    tokens=clip.MAX_TOKENS,
    text_layers=(-2, -1),  # encode_prompt reads each encoder's penultimate layer
    defaults=BASE_DEFAULTS,
    tiny_vae="madebyollin/taesdxl",
    lcm_lora="latent-consistency/lcm-lora-sdxl",
    # A1111's "Approx cheap" (modules/sd_vae_approx.py, cheap_approximation's SDXL matrix), fitted on SDXL latents
    latent_rgb=((0.3448, 0.4168, 0.4395), (-0.1953, -0.0290, 0.0250), (0.1074, 0.0886, -0.0163),
                (-0.3730, -0.2499, -0.2088)),
    archs=ARCHS,
    # random:sdxl, SDXL base 1.0's: CLIP ViT-L 123,060,480 + OpenCLIP ViT-bigG 694,659,840
    parameters={"text": 817_720_320, "denoiser": 2_567_463_684, "decoder": 83_653_863},
    single_file_configs={"stabilityai/stable-diffusion-xl-base-1.0": "sdxl",
                         "diffusers/stable-diffusion-xl-1.0-inpainting-0.1": "sdxl-inpainting"},
    int8="weights",
    # weight-only: no calibration; the child measured 2.9 GiB peak, 97 s, on random:sdxl's UNet (2-core Zen 3,
    # 2026-12-04), beside the parent's compiled text encoders and VAE (3.4 GiB of fp32 weights) and runtime
    int8_memory_gib=8.0,
    no_pt2e="PT2E int8 calibrates the fp32 UNet eagerly in every process (20 CFG calls at 1024x1024: ~139 s each on "
            "2 AVX2 cores, 46 minutes before the first image, where SD 1.5's took 9) and keeps its exported and "
            "prepared copies beside the 10 GB of fp32 weights; use openvino,int8 (weight-only, once per machine)",
)
