#!/usr/bin/env bash
# Set-up of OpenVINO GenAI (Text2ImagePipeline) in a virtual environment of its own, apart from .venv, for the bench's
# `openvino-genai` peer. GenAI reads a model exported to OpenVINO IR by optimum-intel's exporter, as its documentation
# says, so this first sets up optimum-intel's environment (scripts/setup-optimum.sh). Usage: scripts/setup-genai.sh
# [VENV] (default: .venv-genai in the repo root). Idempotent and quick when nothing changed. Environment: PYTHON
# (interpreter to use), SDCPU_TORCH_INDEX (an extra pip index for torch's CPU build), SDCPU_OPTIMUM_PYTHON (an
# optimum-intel environment made elsewhere: then this does not make one).
# Every version is held by scripts/genai-constraints.txt and installed with --no-deps: exactly that list.
set -euo pipefail
venv=$(realpath -m "${1:-$(dirname "$0")/../.venv-genai}")
cd "$(dirname "$0")/.."

. scripts/lib.sh

# 1. The exporter: optimum-intel's environment, unless one is named.
[ -n "${SDCPU_OPTIMUM_PYTHON:-}" ] || scripts/setup-optimum.sh

# 2. A Python >= 3.11 and the virtual environment.
make_venv "$venv"

# 3. Python packages, exactly those of scripts/genai-constraints.txt.
stamp=$venv/.sdcpu-genai-installed
if [ ! -f "$stamp" ] || [ scripts/genai-constraints.txt -nt "$stamp" ] || [ scripts/setup-genai.sh -nt "$stamp" ]; then
    say "installing OpenVINO GenAI and its packages into $venv (first time: a minute or two)"
    # shellcheck disable=SC2046
    "$venv/bin/python" -m pip install -q $(pip_extra_index) --no-deps -r scripts/genai-constraints.txt
    "$venv/bin/python" -c 'import openvino_genai; openvino_genai.TorchGenerator(0)' \
        || { say "openvino_genai failed to import; run: $venv/bin/python -c 'import openvino_genai'"; exit 1; }
    touch "$stamp"
fi
say "OpenVINO GenAI ready: $venv/bin/python"
