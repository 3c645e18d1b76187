"""Tuned profiles: what `sdcpu tune` measured, saved as JSON under $SDCPU_HOME/profiles/, and how `auto` finds one.

A profile's key is what its result depends on:
- machine: CPU model name and architecture, usable physical cores, usable logical CPUs;
- versions: torch and openvino (None when not installed);
- quality: `exact` (fp32 only) or `high` (native bf16 allowed); `auto:fast` uses the high profile and adds its steps;
- workload: the UNet architecture (a hash of its config) and the image size.
`find` always matches machine, versions and quality, and the workload too when the caller knows it (generate, bench).
A caller that does not know the model (`sdcpu info`, `sdcpu launch --auto`) takes the most recent profile matching the
rest, and says so. Delete a profile's .json (and its .md report) to stop `auto` using it.
"""

import datetime
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from sdcpu import families, recipes
from sdcpu.errors import UsageError
from sdcpu.system import locks
from sdcpu.system.home import sdcpu_home
from sdcpu.system.versions import installed

log = logging.getLogger(__name__)
FORMAT = 1


@dataclass(frozen=True)
class Workload:
    unet: str  # unet_hash() of the UNet's config
    size: str  # the image size, "WxH"


@dataclass(frozen=True)
class Profile:
    path: Path
    data: dict

    @property
    def recipe(self) -> str:
        return self.data["recipe"]

    def reason(self, workload_known: bool) -> str:
        d = self.data
        why = (f"tuned profile {self.path} (measured here by sdcpu tune, {d['created']}, {d['model']} at "
               f"{d['key']['workload']['size']}): {d['recipe']}, ~{d['estimate_s']:.2f} s/image vs "
               f"{d['baseline_s']:.2f} for the default; {d['why']}")
        return why + ("" if workload_known else "; the model is not known here: the most recent profile for this "
                      "machine, versions and quality")


def unet_hash(config) -> str:
    """A short hash of a UNet's architecture: its config without the private keys (_name_or_path, versions)."""
    public = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    return hashlib.sha256(json.dumps(public, sort_keys=True, default=str).encode()).hexdigest()[:12]


def tuning_quality(quality: str) -> str:
    return "exact" if quality == "exact" else "high"


def versions() -> dict:
    """The versions a profile's result depends on."""
    return installed(("torch", "openvino"))


def key(cpu, quality: str, workload: Workload) -> dict:
    return {
        "machine": {"cpu": cpu.model_name, "arch": cpu.arch, "usable_physical_cores": len(cpu.usable_physical_cores),
                    "usable_cpus": len(cpu.usable_cpus)},
        "versions": versions(), "quality": tuning_quality(quality),
        "workload": {"unet": workload.unet, "size": workload.size},
    }


def folder() -> Path:
    return sdcpu_home() / "profiles"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def save(data: dict, report: str) -> Path:
    """Write DATA (its key and `created` inside) as profiles/NAME.json, REPORT as NAME.md beside it; the JSON's path."""
    k = data["key"]
    slug = re.sub(r"[^a-z0-9]+", "-", data["model"].lower()).strip("-")
    digest = hashlib.sha256(json.dumps(k, sort_keys=True).encode()).hexdigest()[:8]
    path = folder() / f"{slug}-{k['workload']['size']}-{k['quality']}-{digest}.json"
    data = {"format": FORMAT, **data, "report": path.with_suffix(".md").name}
    with locks.exclusive(path):  # two tunes of one key: one after the other, each file whole
        locks.remove_stale(path)
        locks.write_text(path.with_suffix(".md"), report)
        locks.write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def find(cpu, quality: str, workload: Workload | None = None) -> Profile | None:
    """The profile `auto` should use here, or None. With WORKLOAD None: the most recent one for this machine."""
    wanted = key(cpu, quality, workload or Workload("", ""))
    matches = []
    for path in sorted(folder().glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = None
        problem = malformed(data)
        if problem:
            if path not in _warned:
                _warned.add(path)
                log.warning("profile %s: %s; ignored (delete it, or run sdcpu tune again)", path, problem)
            continue
        k = data["key"]
        same = all(k.get(part) == wanted[part] for part in ("machine", "versions", "quality"))
        if same and (workload is None or k.get("workload") == wanted["workload"]) and data.get("format") == FORMAT:
            matches.append(Profile(path, data))
    return max(matches, key=lambda p: p.data["created"], default=None)


_warned: set[Path] = set()  # the malformed profiles this process has warned about: once each
FIELDS = {"format": int, "created": str, "model": str, "recipe": str, "estimate_s": (int, float),
          "baseline_s": (int, float), "why": str, "key": dict}
KEY_FIELDS = {"machine": dict, "versions": dict, "quality": str, "workload": dict}


def malformed(data) -> str | None:
    """What is wrong with a profile's DATA (None: nothing), so one edited by hand or cut short is ignored."""
    if not isinstance(data, dict):
        return "not a JSON object"
    for fields, where, within in ((FIELDS, "", data), (KEY_FIELDS, "key.", data.get("key"))):
        for field, kind in fields.items():
            if not isinstance(within.get(field), kind) or isinstance(within.get(field), bool):
                return f"{where}{field} is missing or not {_kind_name(kind)}"
    workload = data["key"]["workload"]
    if not all(isinstance(workload.get(field), str) for field in ("unet", "size")):
        return "key.workload needs unet and size, as strings"
    try:
        recipes.parse(data["recipe"])
    except UsageError as err:
        return f"recipe {data['recipe']!r}: {err}"
    return None


def _kind_name(kind) -> str:
    return "a number" if kind == (int, float) else {int: "an integer", str: "a string", dict: "an object"}[kind]


def workload_of(model: str, width: int, height: int) -> Workload | None:
    """The workload of MODEL (a model spec) at WIDTHxHEIGHT from its denoiser's config on disk (the one its family
    names), without loading it; None where the config is not here (a file checkpoint, a hub model not yet downloaded,
    a random model not yet built) or the model is of no family sdcpu runs."""
    from sdcpu.models import local_file, parse_spec

    try:
        spec = parse_spec(model)
    except UsageError:
        return None
    index = local_file(spec, "model_index.json")
    if index is None:
        return None
    try:
        family = families.named(json.loads(index.read_text())["_class_name"])
    except (UsageError, KeyError, ValueError):
        return None
    config = local_file(spec, f"{family.denoiser.attribute}/config.json")
    if config is None:
        return None
    return Workload(unet_hash(json.loads(config.read_text())), f"{width}x{height}")
