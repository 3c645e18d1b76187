#!/usr/bin/env bash
# Set-up for a fresh Debian/Ubuntu machine with Python 3.11: Debian packages (when root), .venv, Python packages.
# Idempotent and quick when nothing changed. Environment: PYTHON (interpreter to use), SDCPU_TORCH_INDEX (an extra
# pip index for torch, e.g. PyTorch's CPU wheel index, where the default index would pick a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh

# 1. Debian packages for the launcher (allocators, numactl).
missing=()
while read -r pkg; do
    [ -z "$pkg" ] || [ "${pkg#\#}" != "$pkg" ] && continue
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done < scripts/debian-packages.txt
if [ ${#missing[@]} -gt 0 ]; then
    if command -v dpkg-query >/dev/null; then apt_install "${missing[@]}"; else say "not a Debian system: install ${missing[*]} yourself"; fi
fi

# 2. A Python >= 3.11 and its virtual environment.
make_venv .venv

# 3. Python packages, every version held by constraints.txt (torch is the CPU build, 2.13.0).
stamp=.venv/.sdcpu-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    say "installing Python packages into .venv (first time: a few minutes)"
    # shellcheck disable=SC2046
    # --no-compile: Python compiles a module the first time it is imported instead of pip compiling every file of
    # every package now (torch's, ray's...): 65 s instead of 147 s for this install on a 2-core machine
    .venv/bin/python -m pip install -q --no-compile $(pip_extra_index) -c constraints.txt -e ".[test,openvino,ray]"
    touch "$stamp"
fi
