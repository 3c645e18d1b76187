"""FLUX.2 [klein]: a rectified-flow transformer (Flux2Transformer2DModel: double-stream then single-stream blocks over
2x2 patches of a 32-channel latent, 128 channels a token) conditioned by a Qwen3 LLM's hidden states (layers 9, 18 and
27 stacked: 7680 wide, the prompt in Qwen3's chat template padded to 512 tokens), the FLUX.2 VAE (AutoencoderKLFlux2,
f8; the pipeline normalises the patched latents by the VAE's batch-norm statistics) and flow-matching Euler with an
empirical shift. The distilled klein makes an image in 4 steps without guidance (one transformer pass a step); the
base model (`is_distilled` false in its model_index.json) runs classifier-free guidance.

Random architectures (../shared/models.md section 4, checked against diffusers 0.42.1 and transformers 5.24):
`flux2-klein-4b` is FLUX.2 [klein] 4B exactly (transformer 3,875,544,576 parameters, Qwen3-4B text encoder
4,022,468,096, VAE 84,046,115), built and kept in bfloat16, the weights' own dtype: in float32 the two networks alone
would take 29 GiB. `tiny-flux2` has the same structure at test sizes (its text encoder keeps 27 layers: the pipeline
reads the 27th hidden state) and builds in seconds. Both tokenize with Qwen's real tokenizer, built offline
(sdcpu.families.qwen).
"""

from dataclasses import dataclass

from sdcpu.families import base, qwen
from sdcpu.families.base import Arch, Defaults, Denoiser, Family

TOKENS = 512  # the pipeline's max_sequence_length: every prompt is padded to it
OUT_LAYERS = (9, 18, 27)  # the Qwen3 hidden states the pipeline stacks (its text_encoder_out_layers, never changed)
# FLUX.2 [klein] 4B's transformer/config.json (models.md section 4)
TRANSFORMER = dict(
    patch_size=1, in_channels=128, out_channels=None, num_layers=5, num_single_layers=20, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=7680, timestep_guidance_channels=256, mlp_ratio=3.0,
    axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, eps=1e-6, guidance_embeds=False,
)
QWEN3_4B = dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                intermediate_size=9728, max_position_embeddings=40960, rope_theta=1_000_000)
VAE = dict(  # its vae/config.json
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=32, norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024,
    patch_size=(2, 2), batch_norm_eps=1e-4, batch_norm_momentum=0.1, mid_block_add_attention=True,
)
SCHEDULER = ("FlowMatchEulerDiscreteScheduler", dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential",
))
TINY = dict(  # the same structure at test sizes: 4 latent channels (16 a patched token), one block of each kind
    transformer=dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                     num_attention_heads=2, joint_attention_dim=48, timestep_guidance_channels=32,
                     axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False),  # the rope axes sum to the head width
    text_encoder=dict(hidden_size=16, num_hidden_layers=27, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                      intermediate_size=32, max_position_embeddings=TOKENS),  # 3 x 16 states = joint_attention_dim
    vae=dict(block_out_channels=(16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8,
             down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2),
)
ARCHS = {
    "flux2-klein-4b": Arch(dict(transformer=TRANSFORMER, text_encoder=QWEN3_4B, vae=VAE), SCHEDULER),
    "tiny-flux2": Arch(TINY, SCHEDULER),
}
DISTILLED = Defaults(steps=4, guidance=1.0, width=1024, height=1024)  # BFL's and sd.cpp's for klein 4B
BASE = Defaults(steps=28, guidance=4.0, width=1024, height=1024)  # klein base: CFG 4 (the pipeline's default)
UPCAST_WHY = ("FLUX.2's bf16 weights computed in float32 (weights=bf16): emulated bf16 matmuls ran 21.7 GFLOP/s "
              "against 156 upcast to float32 on a 1536x3072x9216 linear, 2-core Zen 3, 2026-12-04")
# measured side by side, 512x512, 4 steps, 2-core Zen 3 (bf16 emulated), 2026-12-05 (BENCHMARKS.md): weights=bf16
# with release 328.77 s at 9.67 GiB peak RSS; int8 334.73 s (0.98x) at 8.83 GiB, 55.9 dB against it; int4 340.40 s
# (0.97x) at 6.37 GiB, 37.1 dB
INT8_WHY = ("FLUX.2's weights rounded to int8 (a scale per row), computed in float32 (weights=int8): 8.83 GiB at "
            "512x512 with every part resident, 0.98x weights=bf16,release's speed and 55.9 dB against it (2-core Zen "
            "3, 2026-12-05); taken where bf16 does not fit even with release")
INT4_WHY = ("FLUX.2's weights rounded to 4 bits in groups of 128 (weights=int4): 6.37 GiB at 512x512, 0.97x "
            "weights=bf16,release's speed, 37.1 dB against it (2-core Zen 3, 2026-12-05); taken where nothing larger "
            "fits")
# measured side by side, 512x512, 4 steps, --runs 2, 2-core AMX Xeon (bf16 native), 2026-12-05 (BENCHMARKS.md)
NATIVE_WHY = ("FLUX.2's own bf16 weights computed in bf16 (the model as it loads): 39.73 s an image at 13.90 GiB "
              "against OpenVINO bf16's 51.16 s at 17.84 GiB (2-core AMX Xeon, 2026-12-05)")
COMPILE_WHY = ("torch.compile of its bf16 transformer and VAE: 33.07 vs 40.33 s an image (1.22x) at 19.10 vs 13.94 "
               "GiB, 45.7 dB, after 86 s of compiling in each process (2-core AMX Xeon, 2026-12-05): only where one "
               "process serves many images")
OV_INT8_WHY = ("OpenVINO bf16 with NNCF's int8 weights (openvino=bf16,weights=int8): 46.14 s an image (0.86x the "
               "model as it loads) at 8.24 GiB, 45.1 dB (2-core AMX Xeon, 2026-12-05); taken where bf16 does not fit "
               "even with release")
OV_INT4_WHY = ("OpenVINO bf16 with NNCF's 4-bit weights (openvino=bf16,weights=int4): 46.87 s an image (0.85x) at 5.71 "
               "GiB, 38.7 dB, where eager weights=int4 computes in float32: 184.09 s at 6.50 GiB (2-core AMX Xeon, "
               "2026-12-05); taken where nothing larger fits")
EAGER_INT4_WHY = ("eager weights=int4, computed in float32: 184.09 s an image at 6.50 GiB (2-core AMX Xeon, "
                  "2026-12-05); taken where OpenVINO's first run (its conversion: about 10 GiB) does not fit")
UNET_ONLY = "it patches a UNet2DConditionModel's blocks; FLUX.2's denoiser is a transformer"


@dataclass(frozen=True)
class Flux2Klein(Family):
    def defaults_of(self, pipe) -> Defaults:
        """The distilled klein's (4 steps, no guidance), or the base model's where its pipeline says it is not
        distilled (model_index.json's `is_distilled`)."""
        return self.defaults if pipe.config.get("is_distilled", False) else BASE

    def native_size(self, pipe) -> int:
        """The pipeline's default side: its default_sample_size (128) times the VAE's scale (8)."""
        return pipe.default_sample_size * pipe.vae_scale_factor

    def encode(self, pipe, prompts: list[str]) -> list:
        """The stacked Qwen3 states of each prompt ([TOKENS, 7680]), by the pipeline's own encode_prompt."""
        states, _ = pipe.encode_prompt(prompt=prompts, max_sequence_length=TOKENS, text_encoder_out_layers=OUT_LAYERS)
        return list(states)

    def auto_recipes(self, quality: str, native_bf16: bool) -> tuple[tuple[str, str], ...]:
        """Its own bf16 weights at every level, with release where memory asks: computed in bf16 where the CPU has it
        (OpenVINO bf16 measured slower there), else in float32 from bf16 storage (nothing measured faster); where bf16
        is native a long-running server compiles them (`high`, `fast`). Rounded weights only where nothing less
        rounded fits the machine's memory: int8 from `high`, int4 at `fast`; on OpenVINO where bf16 is native (its
        bf16 kernels decompress them: 4x eager torch's float32 ones), on eager torch elsewhere (OpenVINO's int4
        measured the same speed there, 1.02x, and eager int8 drifts less); eager int4 last where OpenVINO's one-time
        conversion does not fit. The class rules (measured on SD) follow, tried where these do not fit."""
        if native_bf16:
            own, compiled = ("", NATIVE_WHY), (("compile", COMPILE_WHY),)
            rounded = (("openvino=bf16,weights=int8", OV_INT8_WHY),)
            smallest = (("openvino=bf16,weights=int4", OV_INT4_WHY), ("weights=int4", EAGER_INT4_WHY))
        else:
            own, compiled = ("weights=bf16", UPCAST_WHY), ()
            rounded, smallest = (("weights=int8", INT8_WHY),), (("weights=int4", INT4_WHY),)
        if quality == "exact":
            return (own,)
        released = (",".join(filter(None, (own[0], "release"))), own[1] + "; with release: one part resident at a time")
        return (*compiled, own, released, *rounded, *(smallest if quality == "fast" else ()))

    def after_load(self, pipe) -> None:
        """The Qwen3 encoder cut after the deepest layer whose hidden state the pipeline stacks (27 of its 36: 3.11B of
        4.02B parameters, a quarter of its work), without the final norm (which the transformers model applies to its
        last hidden state) and without the LM head (the pipeline reads no logits: 512 x 151936 of them a prompt).
        The stacked states are bit-identical (tests/test_flux2.py)."""
        import torch

        model = pipe.text_encoder
        deepest = max(OUT_LAYERS)
        if len(model.model.layers) > deepest:
            model.model.layers = model.model.layers[:deepest]
            model.config.num_hidden_layers = deepest
        model.model.norm = torch.nn.Identity()
        model.lm_head = torch.nn.Identity()

    def own_preview(self, pipe):
        """Its own VAE (there is no FLUX.2 TAESD in diffusers): a step's tokens unpacked to 2x2-patch channels (the
        pipeline's packing is row-major), un-normalised by the VAE's batch-norm statistics and unpatchified, as the
        pipeline decodes its last step."""
        import torch

        vae = pipe.vae
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1).float() + vae.config.batch_norm_eps)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).float()

        patch = 2 * pipe.vae_scale_factor  # pixels a token covers a side

        def decode(latents, width, height):
            patched = latents.permute(0, 2, 1).reshape(latents.shape[0], -1, height // patch, width // patch)
            latent = pipe._unpatchify_latents(patched * std + mean)
            return vae.decode(latent.to(vae.dtype)).sample.float()

        return decode

    def latent_multiple(self, config) -> int:
        """The pipeline packs 2x2 latent patches into a token."""
        return 2

    def example_inputs(self, config, batch, latent, dtype, generator=None) -> tuple:
        """Image tokens (one per 2x2 latent patch, in_channels wide), the text states (TOKENS x joint_attention_dim),
        the timestep in [0, 1] and the 4-axis positions of image and text tokens (t, h, w, l), as the pipeline makes
        them."""
        import torch

        height, width = latent[0] // 2, latent[1] // 2
        tokens = torch.randn(batch, height * width, config.in_channels, generator=generator).to(dtype)
        context = torch.randn(batch, TOKENS, config.joint_attention_dim, generator=generator).to(dtype)
        rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        zeros = torch.zeros(height * width, dtype=torch.long)
        image_ids = torch.stack([zeros, rows.flatten(), cols.flatten(), zeros], dim=-1).expand(batch, -1, -1)
        text_ids = torch.zeros(TOKENS, 4, dtype=torch.long)
        text_ids[:, 3] = torch.arange(TOKENS)
        return tokens, context, torch.full((batch,), 0.5), image_ids.contiguous(), text_ids.expand(batch, -1, -1)

    def flops(self, config, batch, latent) -> int:
        """One transformer forward on the meta device, its attention counted as the matmuls it is (torch's flop
        counter does not count the fused SDPA kernels)."""
        from unittest import mock

        import torch
        from diffusers import Flux2Transformer2DModel
        from torch.utils.flop_counter import FlopCounterMode

        def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
            weights = query @ key.transpose(-2, -1) * (scale or query.shape[-1] ** -0.5)
            return weights.softmax(dim=-1) @ value

        with torch.device("meta"):
            model = Flux2Transformer2DModel(**{k: v for k, v in dict(config).items() if not k.startswith("_")})
            tokens, context, timestep, image_ids, text_ids = self.example_inputs(model.config, batch, latent,
                                                                                torch.float32)
            with (FlopCounterMode(display=False) as counter, torch.inference_mode(),
                  mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", attention)):
                model(hidden_states=tokens, encoder_hidden_states=context, timestep=timestep, img_ids=image_ids,
                      txt_ids=text_ids)
        return counter.get_total_flops()

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """The transformer: klein's LoRAs train no text encoder (diffusers' FLUX.2 loader loads the transformer's)."""
        return (self.denoiser.attribute,)

    def skeletons(self, pipe) -> dict:
        from diffusers import Flux2Transformer2DModel

        return {"transformer": Flux2Transformer2DModel.from_config(pipe.transformer.config)}

    def lora_state(self, pipeline_class, source, denoiser_config, **kwargs) -> tuple[dict, dict]:
        state_dict, metadata = pipeline_class.lora_state_dict(source, return_lora_metadata=True, **kwargs)
        return state_dict, {"metadata": metadata}  # kohya's alphas already scaled in by the reader

    def load_lora(self, pipeline_class, state_dict, models, **options) -> None:
        pipeline_class.load_lora_into_transformer(state_dict, transformer=models["transformer"], **options)

    def original_state_dict(self, folder) -> dict:
        """The transformer under BFL's names (flux-2-klein-4b.safetensors), in its files' dtype."""
        from sdcpu.families import flux2_layout

        return flux2_layout.original_state_dict(folder)

    def build(self, arch: str, seed: int):
        """A Flux2KleinPipeline (distilled) of ARCH with seeded random weights made in bfloat16 (its weights' own dtype;
        the full model would not fit in float32) and Qwen's tokenizer."""
        import torch
        from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel
        from transformers import Qwen3ForCausalLM

        spec = self.archs[arch]
        parts = spec.components

        def seeded(offset, make):
            return base.seeded(seed, offset, make, torch.bfloat16)  # no float32 copy of 4B parameters on the way

        return Flux2KleinPipeline(
            transformer=seeded(1, lambda: Flux2Transformer2DModel(**parts["transformer"])),
            vae=seeded(2, lambda: AutoencoderKLFlux2(**parts["vae"])),
            text_encoder=seeded(3, lambda: Qwen3ForCausalLM(qwen.text_config(**parts["text_encoder"]))),
            tokenizer=qwen.tokenizer(TOKENS), scheduler=spec.make_scheduler(), is_distilled=True)


FAMILY = Flux2Klein(
    name="flux2",
    summary="FLUX.2 [klein] (a rectified-flow transformer, a Qwen3 text encoder, 32-channel f8 latents in 2x2 patches)",
    # klein's editing is its text-to-image pipeline given reference images; masked inpainting is its own pipeline
    pipelines={"txt2img": "Flux2KleinPipeline", "img2img": "Flux2KleinPipeline",
               "inpaint": "Flux2KleinInpaintPipeline"},
    denoiser=Denoiser(attribute="transformer", label="transformer",
                      inputs=("hidden_states", "encoder_hidden_states", "timestep", "img_ids", "txt_ids")),
    text_encoders=("text_encoder",),
    tokens=TOKENS,
    text_layers=OUT_LAYERS,
    traced=(1, 16),  # one prompt a call; a 16x16 latent (64 image tokens) traces the 3.9B transformer in seconds
    defaults=DISTILLED,
    dtype="bfloat16",
    negative_prompt=False,
    reference_edits=True,
    # peaks at 512x512 (2026-12-05): weights=bf16,release 9.67, int8 8.83, int4 6.37 GiB, each 0.8-1.0 above the
    # terms fitted on SD and SDXL (the float32 VAE's and Qwen3's buffers, a dequantized layer's copies); with it
    # they read 9.6, 8.9, 6.4, and weights=bf16 (14.34 measured 2026-12-04) 15.4, on the safe side
    overhead_gib=0.9,
    prompt_cache=8,  # 8 prompts' states, 15 MiB each in float32: a served prompt again skips a 3.1B-parameter encoder
    size_multiple=16,  # the VAE's 8 x the transformer's 2x2 latent patches
    archs=ARCHS,
    refuses={
        "deepcache": f"DeepCache {UNET_ONLY}",
        "tome": f"ToMe {UNET_ONLY}",
        "lcm-lora": "LCM-LoRA is a UNet LoRA for SD and SDXL; klein already makes an image in 4 steps",
        "tiny-vae": "FLUX.2's tiny decoder (madebyollin/taef2) is not diffusers' AutoencoderTiny: not supported yet",
        "int8": "int8 quantizes a UNet's activations too; FLUX.2's weights are compressed by weights=int8 or "
                "weights=int4 (after openvino: NNCF on its IR)",
    },
    refuses_emulated_bf16={
        "compile": "torch.compile does not pay for FLUX.2's transformer where bf16 is emulated: one single-stream "
                   "block at 512x512 (1536 tokens) ran 1.03x compiled with its bf16 weights computed in float32 "
                   "(weights=bf16); frozen in float32, 1.05x eager float32 (1.14-1.17x weights=bf16, but the "
                   "transformer's weights in float32: 15.5 GB); 5-9 s to compile each of its 25 blocks "
                   "(benchmarks/flux2_compile_block.py, 2-core Zen 3, 2026-12-05); eagerly its matmuls run at ~80% of "
                   "the float32 peak. Where bf16 is native it pays (the block in bf16: 1.30x, 2-core AMX Xeon)",
    },
    # random:flux2-klein-4b, FLUX.2 [klein] 4B's as sdcpu loads it: Qwen3-4B cut after layer 27 (after_load; 4.02B
    # whole), the transformer, the VAE (encoder included)
    parameters={"text": 3_114_088_192, "denoiser": 3_875_544_576, "decoder": 84_046_115},
    # stable-diffusion.cpp reads the Qwen3 weights as transformers saves them and the VAE's diffusers names
    separate_files={"llm_path": "text_encoder", "vae_path": "vae"},
)
