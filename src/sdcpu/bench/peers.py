"""Peers the bench runs side by side with sdcpu: each is a command in its own environment.

optimum-intel (OpenVINO's Stable Diffusion pipelines, the seed's 4.7 s rung) cannot share sdcpu's environment: its
releases pin huggingface-hub below what diffusers 0.42 needs. scripts/setup-optimum.sh builds it its own virtual
environment (`.venv-optimum` in the checkout, or any Python named by $SDCPU_OPTIMUM_PYTHON); its child script imports
only the standard library, optimum-intel and sdcpu.bench.child (dependency-free) through PYTHONPATH.
"""

import json
import os
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2]  # the folder holding the sdcpu package
DEFAULT_PYTHON = SOURCE.parent / ".venv-optimum" / "bin" / "python"


def command(peer: str, spec: dict, environ) -> tuple[list[str], dict]:
    """The argv and environment that run PEER on SPEC; raises RuntimeError with the reason when it cannot run."""
    if peer != "optimum-intel":
        raise ValueError(f"unknown peer {peer!r}")
    python = Path(environ.get("SDCPU_OPTIMUM_PYTHON", DEFAULT_PYTHON))
    if not os.access(python, os.X_OK):
        raise RuntimeError(
            f"optimum-intel's environment is not set up ({python} not found): run scripts/setup-optimum.sh, or set "
            "SDCPU_OPTIMUM_PYTHON; it needs its own (optimum-intel pins huggingface-hub below diffusers 0.42's minimum)"
        )
    from sdcpu import models, random_models
    from sdcpu.home import sdcpu_home

    model = models.parse_spec(spec["protocol"]["model"])
    if model.kind == "file":
        raise RuntimeError("optimum-intel exports a diffusers folder or hub id, not a single-file checkpoint")
    folder = str(random_models.ensure_built(model.ref)) if model.kind == "random" else model.ref
    env = {**environ, "PYTHONPATH": str(SOURCE), "SDCPU_HOME": str(sdcpu_home())}
    if model.kind in ("random", "folder"):
        env["HF_HUB_OFFLINE"] = "1"
    child = Path(__file__).with_name("optimum_child.py")
    return [str(python), str(child), json.dumps({**spec, "model_path": folder, "random_weights": model.random_weights})], env
