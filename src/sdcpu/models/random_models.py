"""Random-weight pipelines of real architectures, built offline and cached as diffusers folders.

Each model family declares its architectures and builds them (sdcpu.families: `random:sd15` is SD 1.5 exactly, so its
compute cost is the real model's; `random:tiny` uses diffusers' test sizes and builds in seconds); this module caches
what they build, loads nothing itself, and marks every folder as random weights. Weights are seeded: the same seed
gives bit-identical tensors.
"""

import json
import os
from pathlib import Path

from sdcpu import families
from sdcpu.system import locks
from sdcpu.system.home import check_space, sdcpu_home

MARKER = "sdcpu.json"  # written into random folders: reports must say the weights are random
FORMAT_VERSION = 2  # bump when a built folder's content changes, so stale caches are rebuilt


def cache_dir(name: str) -> Path:
    return sdcpu_home() / "models" / f"{name}-v{FORMAT_VERSION}"


def built_folder(arch: str, seed: int = 0) -> Path:
    """Where random:ARCH is (or will be) cached."""
    return cache_dir(f"random-{arch}-seed{seed}")


def ensure_built(arch: str, seed: int = 0) -> Path:
    """The cached diffusers folder of random:ARCH with weights, built first if needed."""

    def write(folder):
        check_space(folder, _weight_bytes(arch), f"building random:{arch}")  # before minutes of building
        family = families.of_arch(arch)
        family.save(family.build(arch, seed), folder)
        (folder / MARKER).write_text(json.dumps({"spec": f"random:{arch}", "seed": seed, "weights": "random"}))

    return cached_folder(built_folder(arch, seed), write)


def _weight_bytes(arch: str) -> int:
    """What random:ARCH's weights take on disk, counted on the meta device (no memory, no init time)."""
    import torch

    with torch.device("meta"):
        pipe = build_pipeline(arch)
    modules = [part for part in pipe.components.values() if isinstance(part, torch.nn.Module)]
    return sum(t.numel() * t.element_size() for part in modules for t in (*part.parameters(), *part.buffers()))


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


def ensure_config_folder(arch: str) -> Path:
    """A diffusers folder of ARCH's configs and tokenizer, no weights: what single-file checkpoints load against."""
    import torch

    def write(folder):
        with torch.device("meta"):  # the modules only give their configs: no memory, no init time
            pipe = build_pipeline(arch)
        pipe.save_config(folder)
        for name, component in pipe.components.items():
            if component is None:
                continue
            if hasattr(component, "save_config"):  # diffusers' models and schedulers
                component.save_config(folder / name)
            elif hasattr(component, "save_vocabulary"):  # a tokenizer
                component.save_pretrained(folder / name)
            else:  # a transformers model
                component.config.save_pretrained(folder / name)

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
    """A pipeline of random:ARCH with seeded random weights, built by its family (not cached)."""
    return families.of_arch(arch).build(arch, seed)
