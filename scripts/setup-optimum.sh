#!/usr/bin/env bash
# Set-up of optimum-intel (OVStableDiffusionPipeline and friends) in a virtual environment of its own, apart from
# .venv: optimum-intel 2.2.0 pins transformers<5.6 and huggingface-hub<1.22, which .venv's diffusers 0.42.1 cannot
# live with. Usage: scripts/setup-optimum.sh [VENV] (default: .venv-optimum in the repo root). Idempotent and quick
# when nothing changed. Environment: PYTHON (interpreter to use), SDCPU_TORCH_INDEX (an extra pip index for torch,
# e.g. PyTorch's CPU wheel index, where the default index would pick a CUDA build).
# Every version is held by scripts/optimum-constraints.txt and installed with --no-deps: exactly that list, and no
# torchvision (see the note at the top of that file).
set -euo pipefail
venv=$(realpath -m "${1:-$(dirname "$0")/../.venv-optimum}")
cd "$(dirname "$0")/.."

. scripts/lib.sh

# 1. A Python >= 3.11 and the virtual environment.
make_venv "$venv"

# 2. Python packages, exactly those of scripts/optimum-constraints.txt (torch is the CPU build, 2.13.0).
stamp=$venv/.sdcpu-optimum-installed
if [ ! -f "$stamp" ] || [ scripts/optimum-constraints.txt -nt "$stamp" ] || [ scripts/setup-optimum.sh -nt "$stamp" ]; then
    say "installing optimum-intel and its packages into $venv (first time: a few minutes)"
    # shellcheck disable=SC2046
    "$venv/bin/python" -m pip install -q $(pip_extra_index) --no-deps -r scripts/optimum-constraints.txt
    # A torchvision left from an earlier resolver install would be imported by transformers and fail beside CPU torch.
    if "$venv/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torchvision") is None)'; then
        say "removing torchvision (a CUDA build that cannot load beside CPU torch; optimum's SD pipelines need none)"
        "$venv/bin/python" -m pip uninstall -q -y torchvision
    fi
    HF_HUB_OFFLINE=1 "$venv/bin/python" -W ignore -c 'from optimum.intel import OVStableDiffusionPipeline' 2>/dev/null \
        || { say "optimum.intel failed to import; run: $venv/bin/python -c 'from optimum.intel import OVStableDiffusionPipeline'"; exit 1; }
    touch "$stamp"
fi
say "optimum-intel ready: $venv/bin/python"
