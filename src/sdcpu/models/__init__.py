"""Model specs -> diffusers pipelines: `random:ARCH`, a hub id, a local diffusers folder or a single checkpoint file.

Every kind goes through diffusers' own loaders (`from_pretrained`, `from_single_file`); random models are built
once, cached as diffusers folders and loaded back through the same `from_pretrained` path as real weights.
"""

import enum
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sdcpu import families
from sdcpu.errors import UsageError
from sdcpu.models import random_models, state

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
SINGLE_FILE_SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class Source(enum.StrEnum):
    """Where a model spec's weights come from: built at random (`random:ARCH`), a diffusers folder, a single
    checkpoint file, or the Hugging Face hub."""

    RANDOM = "random"
    FOLDER = "folder"
    FILE = "file"
    HUB = "hub"


@dataclass(frozen=True)
class ModelSpec:
    kind: Source
    ref: str  # the architecture, path or hub id
    random_weights: bool = False  # random:ARCH, or a folder sdcpu built from one
    trust_pickle: bool = field(default=False, compare=False)  # its components may load from .bin pickles

    def __str__(self):
        return f"random:{self.ref}" if self.kind is Source.RANDOM else self.ref


def _random_weights(marker: Path) -> bool:
    """Whether the folder's sdcpu marker (random_models.MARKER, absent in a real model's folder) says its weights are
    random; a marker that is not the JSON object sdcpu writes is refused, not read as real weights."""
    if not marker.is_file():
        return False
    try:
        weights = json.loads(marker.read_text())["weights"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{marker}: not the marker sdcpu writes into a random model's folder ({type(err).__name__}: "
                         f"{err}); remove it, or rebuild the folder") from None
    return weights == "random"


def _family(index: Path):
    """The model family a diffusers folder's model_index.json names (its pipeline class), refused in one line before
    any weight loads where sdcpu runs no such family."""
    try:
        pipeline_class = json.loads(index.read_text())["_class_name"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{index}: not a diffusers model_index.json ({type(err).__name__}: {err})") from None
    return families.named(str(pipeline_class))


def known(spec: ModelSpec):
    """(the family, its request defaults) of SPEC known before it loads (families.base.Family.scheduler_defaults): a
    random:ARCH's; a diffusers folder's, or a hub id's already in the local cache (its model_index.json and scheduler
    config); a .safetensors checkpoint's (the architecture its keys name); else None (a hub id not downloaded, a
    pickle: known once loaded)."""
    if spec.kind is Source.RANDOM:
        return families.of_arch(spec.ref), families.of_arch(spec.ref).arch_defaults(spec.ref)
    if spec.kind is Source.FILE:
        return _single_file_family(spec.ref) if spec.ref.endswith(".safetensors") else None
    index = local_file(spec, "model_index.json")
    if index is None:
        return None
    family = _family(index)
    config = local_file(spec, "scheduler/scheduler_config.json")
    try:
        scheduler = json.loads(config.read_text()) if config else {}
    except (OSError, UnicodeDecodeError, ValueError):
        scheduler = {}  # loading says what is wrong with it
    return family, family.scheduler_defaults(scheduler if isinstance(scheduler, dict) else {})


def local_file(spec: ModelSpec, name: str) -> Path | None:
    """SPEC's file NAME in the diffusers layout ("model_index.json", "unet/config.json") where it is on this machine,
    without a download: in a folder, a built random model's folder, the hub cache; else None (a hub model not
    downloaded, a random model not built, a single-file checkpoint)."""
    if spec.kind is Source.RANDOM:
        path = random_models.built_folder(spec.ref) / name
    elif spec.kind is Source.FOLDER:
        path = Path(spec.ref) / name
    elif spec.kind is Source.HUB:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec.ref, name)
        path = Path(cached) if isinstance(cached, str) else None
    else:
        return None
    return path if path is not None and path.is_file() else None


def known_defaults(spec: ModelSpec):
    """The request defaults of SPEC known before it loads (`known`), else None."""
    found = known(spec)
    return found and found[1]


def _single_file_family(path: str):
    """(the family, its request defaults) of the .safetensors checkpoint at PATH, from its keys (a few tensors read);
    None where the file cannot be read (loading says why)."""
    from diffusers.loaders.single_file_utils import fetch_diffusers_config

    try:
        checkpoint = _LazySafetensors(path)
        family, arch = families.of_single_file(fetch_diffusers_config(checkpoint)["pretrained_model_name_or_path"],
                                               checkpoint)
    except Exception:  # noqa: BLE001 -- not a checkpoint diffusers reads: its load refuses it with the reason
        return None
    return family, family.arch_defaults(arch) if arch else family.defaults


def parse_spec(spec: str, *, trust_pickle: bool = False) -> ModelSpec:
    """Classify a model spec, refusing what cannot be loaded with a one-line reason."""
    if spec.startswith("random:"):
        arch = spec.removeprefix("random:")
        if arch not in families.ARCHS:
            raise UsageError(f"unknown random architecture {arch!r}; choose from: {', '.join(families.ARCHS)}")
        return ModelSpec(Source.RANDOM, arch, random_weights=True)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UsageError(f"{spec}: not a diffusers pipeline folder (no model_index.json)")
        _family(path / "model_index.json")
        return ModelSpec(Source.FOLDER, str(path), _random_weights(path / random_models.MARKER), trust_pickle)
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        if not path.is_file():
            raise UsageError(f"{spec}: no such file")
        if path.suffix.lower() in PICKLE_SUFFIXES and not trust_pickle:
            raise UsageError(
                f"{spec}: pickle checkpoints can run arbitrary code when loaded; "
                "convert it to .safetensors or pass --trust-pickle if you trust its source"
            )
        return ModelSpec(Source.FILE, str(path))
    if HUB_ID.match(spec) and not path.exists():
        if path.parent.is_dir():
            raise UsageError(f"{spec}: no such folder (read as a path, not a hub id, since {path.parent} is a folder "
                             "here; for the hub model, run from another folder)")
        return ModelSpec(Source.HUB, spec, trust_pickle=trust_pickle)
    raise UsageError(f"{spec}: no such file or folder, and not a hub id (org/name) or random:ARCH")


def load_pipeline(spec: str, *, trust_pickle: bool = False, progress: bool = False, dtype=None):
    """Load any model spec as a diffusers pipeline on the CPU, its weights in DTYPE (None: its family's, Family.dtype,
    where the family is known before loading, else float32), each cast as it is read."""
    parsed = spec if isinstance(spec, ModelSpec) else parse_spec(spec, trust_pickle=trust_pickle)
    pipe = _load(parsed, dtype)
    families.of(pipe).after_load(pipe)  # a model of no family sdcpu knows is refused here, not half-way through a recipe
    pipe.set_progress_bar_config(disable=not progress)
    state.of(pipe).model = parsed
    return pipe


def _load(spec: ModelSpec, dtype=None):
    import diffusers.utils.logging
    import torch
    import transformers.utils.logging
    from diffusers import DiffusionPipeline

    diffusers.utils.logging.disable_progress_bar()  # per-file loading bars; the denoising bar is the pipeline's own
    transformers.utils.logging.disable_progress_bar()

    # a component with only .bin (pickle) weights loads only with trust_pickle; diffusers would fall back to it
    found = known(spec) if dtype is None else None
    dtype = dtype or getattr(torch, found[0].dtype if found else "float32")
    safe = {"dtype": dtype, "use_safetensors": None if spec.trust_pickle else True}
    if spec.kind is Source.RANDOM:
        folder = random_models.ensure_built(spec.ref)
        return DiffusionPipeline.from_pretrained(folder, local_files_only=True, **safe)
    if spec.kind is Source.FOLDER:
        try:
            return DiffusionPipeline.from_pretrained(spec.ref, local_files_only=True, **safe)
        except OSError as err:  # diffusers' word for a component without .safetensors weights, among others
            raise UsageError(f"{spec.ref}: {str(err).strip().splitlines()[0]} (.bin pickle weights load only with "
                             "--trust-pickle)") from err
    if spec.kind is Source.FILE:
        return _load_single_file(spec.ref, safe["dtype"])
    try:
        return DiffusionPipeline.from_pretrained(spec.ref, **safe)
    except OSError as err:  # diffusers reports a missing network or repository as OSError
        raise UsageError(
            f"cannot load {spec.ref!r} from the Hugging Face hub: it is not in the local cache, and the hub "
            "could not be reached or has no such model (run with -v for the details)"
        ) from err


def _load_single_file(path: str, dtype):
    """An original-layout checkpoint through diffusers' from_single_file, against the config of the architecture
    diffusers infers from its keys: built locally where a family has that architecture (no network), else the hub's."""
    import diffusers
    from diffusers.loaders.single_file_utils import fetch_diffusers_config, load_single_file_checkpoint

    checkpoint = _LazySafetensors(path) if path.endswith(".safetensors") else load_single_file_checkpoint(path)
    repo = fetch_diffusers_config(checkpoint)["pretrained_model_name_or_path"]
    family, arch = families.of_single_file(repo, checkpoint)
    if arch:
        config = str(random_models.ensure_config_folder(arch))
    else:
        log.info("%s looks like %s; its config comes from the hub", path, repo)
        config = repo
    return getattr(diffusers, family.pipelines["txt2img"]).from_single_file(path, config=config, dtype=dtype)


class _LazySafetensors(Mapping):
    """A checkpoint whose tensors are read on access: inferring the architecture reads a few, not gigabytes."""

    def __init__(self, path: str):
        from safetensors import safe_open

        self._file = safe_open(path, framework="pt")
        self._keys = tuple(self._file.keys())

    def __getitem__(self, key):
        if key not in self._keys:
            raise KeyError(key)
        return self._file.get_tensor(key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)
