"""Random-weight Stable Diffusion pipelines of real architectures, built offline and cached as diffusers folders.

`random:sd15` is SD 1.5 exactly (UNet 859.5M, CLIP ViT-L/14 text encoder, AutoencoderKL f8, PNDM) so its compute
cost is the real model's; `random:sd-turbo` is SD-Turbo's (the SD 2.1 architecture: UNet 865.9M with linear
projections and 1024-wide cross-attention, OpenCLIP ViT-H/14 text encoder of 23 layers, Euler with trailing timesteps
so 1 step is meaningful), run at 1 step without guidance; `random:sd15-inpainting` is SD 1.5 inpainting's (a 9-channel
UNet input: latents, mask, masked-image latents); `random:tiny` (and `random:tiny-inpainting`) use diffusers' test
sizes and build in seconds. All tokenize with the real CLIP BPE merges shipped in sdcpu/data (SD 2.x pads with `!` rather than the end
token: a different token id, the same compute). Weights are seeded: the same seed gives bit-identical tensors.
"""

import gzip
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sdcpu import locks
from sdcpu.home import sdcpu_home

CLIP_VOCAB_SIZE = 49408
CLIP_MAX_TOKENS = 77
MARKER = "sdcpu.json"  # written into random folders: reports must say the weights are random
FORMAT_VERSION = 2  # bump when a built folder's content changes, so stale caches are rebuilt

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
SD_VAE = dict(
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215,
)


@dataclass(frozen=True)
class Arch:
    unet: dict
    vae: dict
    text_encoder: dict
    scheduler: tuple[str, dict] = ("PNDMScheduler", SD15_SCHEDULER)  # a diffusers scheduler class and its config


ARCHS = {
    # SD 1.5: UNet2DConditionModel's defaults are SD 1.x's, but for the text-conditioning width.
    "sd15": Arch(
        unet=dict(sample_size=64, cross_attention_dim=768),
        vae=SD_VAE,
        text_encoder=dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            projection_dim=768, hidden_act="quick_gelu",
        ),
    ),
    # SD-Turbo (stabilityai/sd-turbo): SD 2.1's UNet and text encoder (the last of ViT-H's 24 layers is not used).
    "sd-turbo": Arch(
        unet=dict(sample_size=64, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                  use_linear_projection=True),
        vae=SD_VAE,
        text_encoder=dict(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
            projection_dim=512, hidden_act="gelu",
        ),
        scheduler=("EulerDiscreteScheduler", TURBO_SCHEDULER),
    ),
    # SD 1.5 inpainting (stable-diffusion-v1-5/stable-diffusion-inpainting): SD 1.5 with a 9-channel UNet input
    # (latents, the mask, the masked image's latents).
    "sd15-inpainting": Arch(
        unet=dict(sample_size=64, cross_attention_dim=768, in_channels=9),
        vae=SD_VAE,
        text_encoder=dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            projection_dim=768, hidden_act="quick_gelu",
        ),
    ),
    # diffusers' own fast-test sizes (tests/pipelines/stable_diffusion), with CLIP's real vocabulary.
    "tiny": Arch(
        unet=dict(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=32, cross_attention_dim=32,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        ),
        vae=dict(
            block_out_channels=(32, 64), latent_channels=4, sample_size=64,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        ),
        text_encoder=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=5, num_attention_heads=4),
    ),
}
ARCHS["tiny-inpainting"] = Arch(unet={**ARCHS["tiny"].unet, "in_channels": 9}, vae=ARCHS["tiny"].vae,
                                text_encoder=ARCHS["tiny"].text_encoder)


def cache_dir(name: str) -> Path:
    return sdcpu_home() / "models" / f"{name}-v{FORMAT_VERSION}"


def built_folder(arch: str, seed: int = 0) -> Path:
    """Where random:ARCH is (or will be) cached."""
    return cache_dir(f"random-{arch}-seed{seed}")


def ensure_built(arch: str, seed: int = 0) -> Path:
    """The cached diffusers folder of random:ARCH with weights, built first if needed."""

    def write(folder):
        build_pipeline(arch, seed).save_pretrained(folder, safe_serialization=True)
        _prefix_text_encoder(folder)
        (folder / MARKER).write_text(json.dumps({"spec": f"random:{arch}", "seed": seed, "weights": "random"}))

    return cached_folder(built_folder(arch, seed), write)


def ensure_tiny_vae(scale: int = 8, seed: int = 0) -> Path:
    """The cached diffusers folder of a random-weight TAESD (AutoencoderTiny, 4-channel latents) that scales images by
    SCALE: TAESD's own architecture for SD's 8, fewer down/up blocks for the test-size model's smaller factor."""

    def write(folder):
        import torch
        from diffusers import AutoencoderTiny

        blocks = scale.bit_length()  # one block, then one more per halving: 4 for TAESD's 8
        torch.manual_seed(seed * 1000 + 4)
        AutoencoderTiny(
            encoder_block_out_channels=(64,) * blocks, decoder_block_out_channels=(64,) * blocks,
            num_encoder_blocks=(1, 3, 3, 3)[:blocks], num_decoder_blocks=(3, 3, 3, 1)[-blocks:],
        ).eval().save_pretrained(folder, safe_serialization=True)
        (folder / MARKER).write_text(json.dumps({"spec": "random:taesd", "seed": seed, "weights": "random"}))

    return cached_folder(cache_dir(f"random-taesd{scale}x-seed{seed}"), write, marker="config.json")


def _prefix_text_encoder(folder: Path) -> None:
    """Key the text encoder's weights `text_model.*`, as SD 1.5's own files do: transformers 5.24 saves them without
    the prefix and reads both forms; older releases (optimum-intel's environment) read only the prefixed one and would
    silently load random weights in their place."""
    from safetensors.torch import load_file, save_file

    for path in (folder / "text_encoder").glob("*.safetensors"):
        tensors = load_file(path)
        save_file({key if key.startswith("text_model.") else f"text_model.{key}": tensor
                   for key, tensor in tensors.items()}, path, metadata={"format": "pt"})


def ensure_config_folder(arch: str) -> Path:
    """A diffusers folder of ARCH's configs and tokenizer, no weights: what single-file checkpoints load against."""
    import torch

    def write(folder):
        with torch.device("meta"):  # the modules only give their configs: no memory, no init time
            pipe = build_pipeline(arch)
        pipe.save_config(folder)
        for name in ("unet", "vae", "scheduler"):
            getattr(pipe, name).save_config(folder / name)
        pipe.text_encoder.config.save_pretrained(folder / "text_encoder")
        pipe.tokenizer.save_pretrained(folder / "tokenizer")

    return cached_folder(cache_dir(f"config-{arch}"), write)


def cached_folder(folder: Path, write, marker: str = "model_index.json") -> Path:
    """Return FOLDER, first filling it with write(staging) and renaming it into place: never half-written. One process
    builds it at a time (a second one waits, then finds it built); staging left by a killed build is removed."""
    if (folder / marker).is_file():
        return folder
    with locks.exclusive(folder):
        if (folder / marker).is_file():
            return folder
        locks.remove_stale(folder)
        staging = locks.staging(folder)
        try:
            staging.mkdir()
            write(staging)
            os.replace(staging, folder)
        finally:
            locks.remove(staging)
    return folder


def build_pipeline(arch: str, seed: int = 0):
    """A StableDiffusionPipeline of ARCH with seeded random weights (no safety checker: it would flag noise); a
    StableDiffusionInpaintPipeline where its UNet takes 9 channels."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, StableDiffusionInpaintPipeline, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = ARCHS[arch]

    def seeded(offset, make):
        torch.manual_seed(seed * 1000 + offset)  # each component gets its own stream, independent of build order
        return make().eval()

    text_config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, max_position_embeddings=CLIP_MAX_TOKENS,
        bos_token_id=0, pad_token_id=1, eos_token_id=2, **spec.text_encoder,
    )
    with torch.device("cpu"):  # schedulers hold small tensors they copy to the CPU: not on a meta device
        scheduler = getattr(diffusers, spec.scheduler[0]).from_config(spec.scheduler[1])
    kind = StableDiffusionInpaintPipeline if spec.unet.get("in_channels") == 9 else StableDiffusionPipeline
    return kind(
        unet=seeded(1, lambda: UNet2DConditionModel(**spec.unet)),
        vae=seeded(2, lambda: AutoencoderKL(**spec.vae)),
        text_encoder=seeded(3, lambda: CLIPTextModel(text_config)),
        tokenizer=clip_tokenizer(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def clip_tokenizer():
    """CLIP's tokenizer (49,408 tokens, 77 positions) from the merges shipped in the package."""
    from transformers import CLIPTokenizer

    with resources.files("sdcpu").joinpath("data/clip_merges.txt.gz").open("rb") as raw:
        merges = [tuple(line.split()) for line in gzip.decompress(raw.read()).decode("utf-8").splitlines()[1:]]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_TOKENS)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))
