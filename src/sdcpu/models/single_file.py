"""A diffusers folder as one original-layout checkpoint, the file A1111 and stable-diffusion.cpp load.

sdcpu's models are diffusers folders (`random:ARCH` included); stable-diffusion.cpp, like A1111 and ComfyUI, reads one
`.safetensors` keyed as the model's original repository named its modules. The key layout is the model family's
(`Family.original_state_dict`: SD's in sdcpu.families.sd_layout); this module writes it once per folder, in float32
for SD and SDXL (the precision sdcpu runs them in), in bf16 for FLUX.2 (its weights' own; stable-diffusion.cpp
converts on load to the weight type it is asked for), atomically, with the folder's scheduler config in the metadata
(`sdcpu_scheduler`) for a reader that picks its own sampler to match it. Where a family's tools read some networks
from files of their own (`Family.separate_files`: FLUX.2's Qwen3 and VAE), `separate_files` names the folder's.
Checkpoints are cached under $SDCPU_HOME/single-file.
"""

import hashlib
import json
import os
import tempfile
from pathlib import Path

from sdcpu import families
from sdcpu.system.home import sdcpu_home

FORMAT_VERSION = 1  # bump when the written layout changes, so cached checkpoints are rewritten


def ensure_checkpoint(folder: Path) -> Path:
    """The original-layout checkpoint of diffusers FOLDER, written first if this folder's weights have none yet."""
    folder = Path(folder).resolve()
    target = checkpoint_path(folder)
    if target.is_file():
        return target
    tensors = family_of(folder).original_state_dict(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    scheduler = (folder / "scheduler" / "scheduler_config.json").read_text()
    write_atomically(tensors, target, {"format": "pt", "sdcpu_source": str(folder), "sdcpu_scheduler": scheduler})
    return target


def separate_files(folder: Path) -> dict[str, str]:
    """The tool option -> weights file of each network of diffusers FOLDER that its family's single-file tools load
    apart from the checkpoint (FLUX.2's llm_path and vae_path); refuses a component saved in shards."""
    found = {}
    for option, component in family_of(folder).separate_files.items():
        files = sorted((Path(folder) / component).glob("*.safetensors"))
        if len(files) != 1:
            raise ValueError(f"{folder / component}: {len(files)} .safetensors files; a single-file tool reads one")
        found[option] = str(files[0])
    return found


def checkpoint_path(folder: Path) -> Path:
    """Where FOLDER's checkpoint is cached (written or not)."""
    return sdcpu_home() / "single-file" / f"{cache_key(Path(folder).resolve())}.safetensors"


def family_of(folder: Path):
    """The model family of diffusers FOLDER, from its model_index.json."""
    return families.named(json.loads((folder / "model_index.json").read_text())["_class_name"])


def cache_key(folder: Path) -> str:
    """A hash of the folder's path and each component file's size and mtime: a rebuilt model gets a new checkpoint."""
    parts = [f"v{FORMAT_VERSION}", str(folder)]
    for component in (*family_of(folder).components, "scheduler"):  # the scheduler's config rides in the metadata
        files = sorted(p for p in (folder / component).rglob("*") if p.is_file())
        if not files:
            raise FileNotFoundError(f"{folder}: no {component}/ folder; a pipeline folder of its family has one")
        parts += [f"{p.relative_to(folder)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def write_atomically(tensors: dict, target: Path, metadata: dict) -> None:
    """Save TENSORS to TARGET through a temporary file in its folder: a crash never leaves a partial checkpoint."""
    from safetensors.torch import save_file

    handle, staging = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".tmp", dir=target.parent)
    os.close(handle)
    try:
        save_file(tensors, staging, metadata=metadata)
        os.replace(staging, target)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
