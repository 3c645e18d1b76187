"""The user's own LoRAs on any recipe: `--lora FILE_OR_ID[:WEIGHT]`, A1111's `<lora:name:weight>` prompt tags, a
folder of LoRAs, and `use(pipe, loras)`, which makes a pipeline run with exactly that set of LoRAs.

Formats: whatever diffusers' `lora_state_dict` reads (kohya `lora_unet_*`/`lora_te_*` keys with their `.alpha`, the
diffusers and peft layouts), from `.safetensors`; pickle files (`.bin`, `.pt`, `.ckpt`) only with trust_pickle, since
loading one can run code. A hub id (`org/name`) or a diffusers-saved folder loads its safetensors weights.

How `use` switches depends on what runs the UNet after `sdcpu.optimize`:
- the eager torch UNet (baseline, channels_last, bf16, deepcache, tome, lcm-lora already fused): each LoRA is loaded
  once as a peft adapter (diffusers' `load_lora_weights`, named from a hash of its source) and a set is switched with
  `set_adapters(names, weights)` / `disable_lora()`: milliseconds, and no LoRA leaves the base weights untouched in
  any dtype. The adapters' extra matmuls cost at every step (random:sd15, rank 16, 256x256 UNet call: +14% on a
  shared 2-core machine), so `fuse=True` (what `generate --lora` uses: one set per process) also fuses the set into
  the weights (`fuse_lora`; about 5 s there) after keeping the target layers' own weights, which the next switch
  copies back: exact, where `unfuse_lora` alone subtracts dW again and drifts (8 mantissa bits in bf16);
- OpenVINO: the LoRA's per-layer dW added to the IR's weight constants (sdcpu.backends.openvino_lora), compiled once
  per set and kept in a small in-memory cache;
- `compile` (inductor, frozen weights) and `int8`: refused with the reason (Skip).
"""

import contextlib
import hashlib
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sdcpu import families, state
from sdcpu.errors import UsageError
from sdcpu.steps_base import Skip

PICKLE_SUFFIXES = (".bin", ".pt", ".ckpt", ".pth")
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
PROMPT_TAG = re.compile(r"<lora:([^:>]+)(?::([^>]*))?>")


@dataclass(frozen=True)
class Lora:
    """A LoRA: a file, a diffusers folder or a hub id, at WEIGHT (A1111's multiplier: 1 as trained, 0 none)."""

    source: str
    weight: float = 1.0
    trust_pickle: bool = False

    @property
    def name(self) -> str:
        """The name A1111 shows: a file's stem, else the folder's or id's last part."""
        return Path(self.source).stem if Path(self.source).is_file() else self.source.rstrip("/").split("/")[-1]

    @property
    def adapter(self) -> str:
        """The peft adapter name: a hash of the source (the weight is set per call, not per adapter)."""
        return "sdcpu_" + hashlib.sha256(self.source.encode()).hexdigest()[:12]

    def digest(self) -> str:
        """The first 12 hex digits of the file's SHA-256 (A1111's `Lora hashes`); a folder or hub id: its source."""
        path = Path(self.source)
        return _file_digest(path, path.stat().st_mtime_ns) if path.is_file() else self.source

    def loader_kwargs(self) -> dict:
        """diffusers' `lora_state_dict` options: safetensors only, unless pickle is trusted."""
        return {} if self.trust_pickle else {"use_safetensors": True}


@lru_cache(maxsize=64)
def _file_digest(path: Path, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def parse(text: str, trust_pickle: bool = False) -> Lora:
    """`FILE_OR_ID[:WEIGHT]` as a Lora, checked (the file exists, pickle only when trusted), or a one-line UsageError."""
    source, weight = text, 1.0
    if not Path(text).expanduser().exists() and ":" in text:
        source, _, raw = text.rpartition(":")
        weight = _weight(raw, f"--lora {text}")
    path = Path(source).expanduser()
    if path.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES) and not path.is_file():
        raise UsageError(f"--lora {source}: no such file")
    if path.suffix.lower() in PICKLE_SUFFIXES and not trust_pickle:
        raise UsageError(f"--lora {source}: a {path.suffix} file is a pickle, and loading one can run code: "
                         "pass --trust-pickle")
    if not path.exists() and not HUB_ID.fullmatch(source):
        raise UsageError(f"--lora {source}: neither a .safetensors file, a folder nor a hub id (org/name)")
    if not path.exists() and path.parent.is_dir():  # `loras/mine` where loras/ is here: a path, not a hub id
        raise UsageError(f"--lora {source}: no such file or folder (read as a path, since {path.parent} is a folder "
                         "here)")
    return Lora(str(path.resolve()) if path.exists() else source, weight, trust_pickle)


def _weight(raw: str, what: str) -> float:
    try:
        weight = float(raw)
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight):
        raise UsageError(f"{what}: the weight {raw!r} is not a number")
    return weight


def prompt_loras(prompt: str) -> tuple[str, tuple[tuple[str, float], ...]]:
    """A1111's `<lora:name:weight>` tags (weight optional, default 1) taken out of PROMPT: the prompt without them
    and the (name, weight) of each tag, in order."""
    tags = tuple((name.strip(), _weight(raw, f"<lora:{name}:{raw}>") if raw else 1.0)
                 for name, raw in PROMPT_TAG.findall(prompt))
    rest = " ".join(PROMPT_TAG.sub(" ", prompt).split())
    return rest.replace(" ,", ","), tags


@dataclass(frozen=True)
class Folder:
    """A `--lora-dir`: its LoRAs are its .safetensors files, named by their stem; nothing outside it is reachable."""

    path: Path

    def names(self) -> list[str]:
        return sorted(p.stem for p in Path(self.path).glob("*.safetensors") if p.is_file())

    def resolve(self, name: str) -> Path:
        """The file of the LoRA NAME, or a one-line UsageError: a path, `..` or a name not in the folder."""
        if not name or "/" in name or "\\" in name or ".." in name:
            raise UsageError(f"LoRA {name!r}: a name from the LoRA folder, not a path")
        if name not in self.names():
            raise UsageError(f"LoRA {name!r} is not in {self.path} ({', '.join(self.names()) or 'none there'})")
        return Path(self.path) / f"{name}.safetensors"


def use(pipe, loras: tuple[Lora, ...], fuse: bool = False) -> str:
    """Make PIPE run with exactly LORAS (empty: none), whatever recipe optimized it; what was done. FUSE: on the eager
    UNet, fuse the set into the weights (no per-step cost; each switch then costs a fuse). Raises Skip where the LoRAs
    cannot apply to what runs the UNet (never leaves a LoRA silently out)."""
    sources = [lora.source for lora in loras]
    if len(set(sources)) < len(sources):
        raise UsageError("a LoRA is named twice: give each once, with its weight")
    runtime = state.of(pipe).runtime
    if runtime.lora == "peft":
        return _eager(pipe, loras, fuse)
    if runtime.lora == "ir-deltas":
        from sdcpu.backends import openvino_lora

        return openvino_lora.use(pipe, loras)
    if not loras:
        return "no LoRA"
    raise Skip(runtime.no_lora)


@contextlib.contextmanager
def loading(lora: Lora):
    """diffusers' LoRA loading of LORA, its failures as one line: an unreadable file, keys or shapes of another
    model; no peft: Skip."""
    try:
        yield
    except ImportError as err:
        raise Skip(f"loading a LoRA needs peft ({err})") from None
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else "no detail"
        raise UsageError(f"LoRA {lora.source}: cannot load it ({type(err).__name__}: {detail})") from None


def _eager(pipe, loras, fuse: bool) -> str:
    _unfuse(pipe)
    loaded = {name for names in pipe.get_list_adapters().values() for name in names}
    for lora in loras:
        if lora.adapter not in loaded:
            with loading(lora):
                pipe.load_lora_weights(lora.source, adapter_name=lora.adapter, **lora.loader_kwargs())
    if not loras:
        if loaded:
            pipe.disable_lora()
        return "no LoRA" + (" (adapters disabled: the base weights)" if loaded else "")
    pipe.enable_lora()
    names = [lora.adapter for lora in loras]
    pipe.set_adapters(names, [lora.weight for lora in loras])
    how = "peft adapters on the eager UNet and text encoder"
    if fuse:
        from peft.tuners.lora import LoraLayer

        # the adapted layers' own weights, kept to put back exactly: unfuse_lora subtracts dW again, which drifts
        pipe.sdcpu_lora_originals = [(layer, layer.base_layer.weight.detach().clone())
                                     for name in families.of(pipe).lora_targets
                                     for layer in getattr(pipe, name).modules()
                                     if isinstance(layer, LoraLayer)]
        pipe.fuse_lora(adapter_names=names)
        how += ", fused into their weights"
    return f"{how}: " + ", ".join(f"{lora.name}:{lora.weight:g}" for lora in loras)


def _unfuse(pipe) -> None:
    """Put back the weights a fused set changed, exactly, and mark the adapters unmerged."""
    originals = pipe.__dict__.pop("sdcpu_lora_originals", None)
    if originals is None:
        return
    pipe.unfuse_lora()
    for layer, weight in originals:
        layer.base_layer.weight.data.copy_(weight)
