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
    # pip compiles every file to bytecode one at a time; compileall does it on every core: 61 + 39 s instead of 147 s
    # on 2 cores. Compiled here, not on first import: where PYTHONDONTWRITEBYTECODE is set, an import never writes its
    # bytecode, and every process would compile torch again (21 s instead of 9 to import torch and diffusers). A file
    # that is not Python 3.11 (torch's py312 test helpers) fails to compile, as it does under pip: not an error here.
    .venv/bin/python -m pip install -q --no-compile $(pip_extra_index) -c constraints.txt -e ".[test,openvino,ray,mcp]"
    .venv/bin/python -m compileall -q -j 0 .venv/lib/python3*/site-packages > /dev/null || true
    touch "$stamp"
fi
