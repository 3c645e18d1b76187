"""What a LoRA is to sdcpu: `--lora FILE_OR_ID[:WEIGHT]`, A1111's `<lora:name:weight>` prompt tags, a folder of
LoRAs, and diffusers' loading of one, its failures as one line. Making a pipeline run with a set of them is
sdcpu.pipeline.lora's.

Formats: whatever diffusers' `lora_state_dict` reads (kohya `lora_unet_*`/`lora_te_*` keys with their `.alpha`, the
diffusers and peft layouts), from `.safetensors`; pickle files (`.bin`, `.pt`, `.ckpt`) only with trust_pickle, since
loading one can run code. A hub id (`org/name`) or a diffusers-saved folder loads its safetensors weights.
"""

import contextlib
import hashlib
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sdcpu.errors import Skip, UsageError

PICKLE_SUFFIXES = (".bin", ".pt", ".ckpt", ".pth")
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
PROMPT_TAG = re.compile(r"<lora:([^:>]+)(?::([^>]*))?>")
MAX_WEIGHT = 10.0  # |weight| bound: A1111's slider goes to 2; far past 10 the image is blown out (1e30: blank)


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
    if abs(weight) > MAX_WEIGHT:
        raise UsageError(f"{what}: the weight {raw} is out of bounds: from -{MAX_WEIGHT:g} to {MAX_WEIGHT:g}")
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
    """A `--lora-dir`: its LoRAs are its .safetensors files, named by their stem; nothing outside it is reachable (a
    symbolic link out of it is no LoRA of it). Its messages name LoRAs, never the folder's path."""

    path: Path

    def names(self) -> list[str]:
        return sorted(p.stem for p in Path(self.path).glob("*.safetensors") if p.is_file() and self._inside(p))

    def resolve(self, name: str) -> Path:
        """The file of the LoRA NAME, or a one-line UsageError: a path, `..`, a link out of the folder or a name not
        in it."""
        if not name or "/" in name or "\\" in name or ".." in name:
            raise UsageError(f"LoRA {name!r}: a name from the LoRA folder, not a path")
        path = Path(self.path) / f"{name}.safetensors"
        if path.is_file() and not self._inside(path):
            raise UsageError(f"LoRA {name!r} links outside the LoRA folder: refused")
        if name not in self.names():
            raise UsageError(f"LoRA {name!r} is not in the LoRA folder ({', '.join(self.names()) or 'none there'})")
        return path

    def _inside(self, path: Path) -> bool:
        """Whether PATH, its links followed, is in the folder."""
        return path.resolve().is_relative_to(Path(self.path).resolve())


@contextlib.contextmanager
def loading(lora: Lora):
    """diffusers' LoRA loading of LORA, its failures as one line naming the LoRA, never its folder (a server's
    --lora-dir): an unreadable or malformed file (safetensors' own error), keys or shapes of another model; no peft:
    Skip."""
    from safetensors import SafetensorError

    try:
        yield
    except ImportError as err:
        raise Skip(f"loading a LoRA needs peft ({err})") from None
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else "no detail"
        detail = detail.replace(lora.source, lora.name)
        if Path(lora.source).is_absolute():  # a file's: the message may name its folder
            detail = detail.replace(str(Path(lora.source).parent), "<the LoRA folder>")
        raise UsageError(f"LoRA {lora.name!r}: cannot load it ({type(err).__name__}: {detail})") from None
