"""Peers the bench runs side by side with sdcpu: each is a child script run by the interpreter of its own environment.

A peer cannot share sdcpu's `.venv` (each entry says why), so a `scripts/setup-NAME.sh` builds its own, exactly pinned
(`.venv-NAME` in the checkout, or any interpreter named by the peer's variable). Its child script imports only the
standard library, the peer and sdcpu's dependency-free modules (`sdcpu.bench.child`, `sdcpu.system.home`) through
PYTHONPATH, runs the protocol, and prints one JSON row, like sdcpu's own child. A rung names its peer as `NAME` or `NAME:VARIANT` (stable-diffusion.cpp's weight
type: `stable-diffusion.cpp:q8_0`).
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2]  # the folder holding the sdcpu package
CHECKOUT = SOURCE.parent


@dataclass(frozen=True)
class Peer:
    name: str
    venv: str  # its environment's folder in the checkout
    setup: str  # the script that builds it
    python_variable: str  # names another interpreter for it
    child: str  # its child script, beside this module
    own_environment: str  # why it cannot share sdcpu's .venv
    reads: str  # what it loads: "ir" (OpenVINO IR, exported by optimum-intel's CLI: bench.ir_export), "single-file"
    variants: tuple[str, ...] = ()  # what `NAME:VARIANT` may name; the first is the default
    real_sizes_only: str = ""  # why it cannot load sdcpu's test-size random:tiny* models ("": it can)

    def python(self, environ) -> Path:
        return Path(environ.get(self.python_variable, CHECKOUT / self.venv / "bin" / "python"))

    def missing(self, environ) -> str | None:
        """Why its environment cannot run, or None."""
        python = self.python(environ)
        if os.access(python, os.X_OK):
            return None
        return (f"{self.name}'s environment is not set up ({python} not found): run {self.setup}, "
                f"or set {self.python_variable}; it needs its own ({self.own_environment})")


PEERS = {peer.name: peer for peer in (
    Peer("optimum-intel", ".venv-optimum", "scripts/setup-optimum.sh", "SDCPU_OPTIMUM_PYTHON", "optimum_child.py",
         "optimum-intel pins huggingface-hub below diffusers 0.42's minimum", "ir"),
    Peer("openvino-genai", ".venv-genai", "scripts/setup-genai.sh", "SDCPU_GENAI_PYTHON", "genai_child.py",
         "its C++ pipeline needs no torch or diffusers; it reads IR that optimum-intel's exporter writes", "ir"),
    Peer("stable-diffusion.cpp", ".venv-sdcpp", "scripts/setup-sdcpp.sh", "SDCPU_SDCPP_PYTHON", "sdcpp_child.py",
         "a native build of ggml (CMake, minutes) that sdcpu does not need", "single-file",
         ("f32", "q8_0", "f16", "q4_0"),
         "it builds each network at its real model's sizes, known from tensor names alone (SDXL: a 320-channel UNet, "
         "768- and 1280-wide text encoders), and refuses weights of other shapes"),
)}
EXPORTER = PEERS["optimum-intel"]  # its environment's optimum-cli writes the IR folder both OpenVINO peers read


def parse(text: str) -> tuple[Peer, str | None]:
    """'stable-diffusion.cpp:q8_0' -> (its Peer, 'q8_0'); refuses an unknown peer or variant."""
    name, _, variant = text.partition(":")
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; peers: {', '.join(PEERS)}")
    peer = PEERS[name]
    if variant and variant not in peer.variants:
        raise ValueError(f"{name} has no variant {variant!r}" + (f"; choose from {', '.join(peer.variants)}"
                                                                 if peer.variants else ""))
    return peer, variant or (peer.variants[0] if peer.variants else None)


def command(text: str, spec: dict, cpu, environ) -> tuple[list[str], dict, list[dict]]:
    """The argv and environment that run peer TEXT on SPEC, and the steps done here for it (a row's `steps` entries:
    a checkpoint written, timed); raises RuntimeError with the reason when it cannot run."""
    import time

    from sdcpu import models
    from sdcpu.models import random_models, single_file
    from sdcpu.system.home import sdcpu_home

    peer, variant = parse(text)
    for needed in (peer, EXPORTER) if peer.reads == "ir" else (peer,):
        if reason := needed.missing(environ):
            raise RuntimeError(reason if needed is peer else f"{peer.name} reads IR exported by optimum-intel: {reason}")
    model = models.parse_spec(spec["protocol"]["model"])
    if peer.real_sizes_only and model.kind is models.Source.RANDOM and model.ref.startswith("tiny"):
        raise RuntimeError(f"{peer.name} cannot run random:{model.ref}, a test-size model: {peer.real_sizes_only}; "
                           "run it on a real-size one (random:sd15, random:sdxl, random:sdxl-turbo, "
                           "random:flux2-klein-4b)")
    if model.kind is models.Source.FILE and peer.reads != "single-file":
        raise RuntimeError(f"{peer.name} reads a diffusers folder or hub id, not a single-file checkpoint")
    folder = str(random_models.ensure_built(model.ref)) if model.kind is models.Source.RANDOM else model.ref
    # a family kept in its 16-bit weights (FLUX.2: 32 GB in float32) is never run by a peer in float32
    family = single_file.family_of(Path(folder)) if model.kind in (models.Source.RANDOM, models.Source.FOLDER) else None
    sixteen_bit = family is not None and family.dtype != "float32"
    if peer.reads == "single-file" and variant == "f32" and sixteen_bit:
        raise RuntimeError(f"{peer.name} f32 would hold {family.name}'s {family.dtype} weights in float32 (FLUX.2 "
                           f"klein 4B's with its Qwen3: 32 GB): run {peer.name}:f16, :q8_0 or :q4_0")
    fields = {"model_path": folder, "random_weights": model.random_weights, "variant": variant,
              "threads": len(cpu.usable_physical_cores)}
    done = []
    if peer.reads == "single-file" and model.kind is not models.Source.FILE:
        start, cached = time.perf_counter(), single_file.checkpoint_path(Path(folder)).is_file()
        fields["model_path"] = str(single_file.ensure_checkpoint(Path(folder)))
        fields["files"] = single_file.separate_files(Path(folder))  # FLUX.2's Qwen3 and VAE, read as they are
        done.append({"step": "single-file", "applied": True, "s": round(time.perf_counter() - start, 2),
                     "detail": f"checkpoint {'reused' if cached else 'written'}: {fields['model_path']}"
                               + "".join(f"; {option} {path}" for option, path in fields["files"].items())})
    if peer.reads == "ir":
        fields["exporter"] = str(EXPORTER.python(environ).with_name("optimum-cli"))
        # fp32 IR as the seed ran SD; a 16-bit family's gets optimum-intel's own default past 1B parameters: int8
        fields["weight_format"] = "int8" if sixteen_bit else "fp32"
    env = {**environ, "PYTHONPATH": str(SOURCE), "SDCPU_HOME": str(sdcpu_home())}
    if model.kind in (models.Source.RANDOM, models.Source.FOLDER):
        env["HF_HUB_OFFLINE"] = "1"
    child = Path(__file__).with_name(peer.child)
    return [str(peer.python(environ)), str(child), json.dumps({**spec, **fields})], env, done
