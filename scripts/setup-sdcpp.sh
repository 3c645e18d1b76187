#!/usr/bin/env bash
# Set-up of stable-diffusion.cpp (pip `stable-diffusion-cpp-python`: ggml's C++ engine with Python bindings) in a
# virtual environment of its own, for the bench's peer rung; it needs none of sdcpu's torch stack. Usage:
# scripts/setup-sdcpp.sh [VENV] (default: .venv-sdcpp in the repo root). The package is an sdist: the first run
# compiles ggml and stable-diffusion.cpp with CMake, which takes several minutes (about five on 2 cores); later runs are
# quick when nothing changed. Needs a C/C++ compiler (g++, installed when root on Debian). Environment: PYTHON
# (interpreter to use).
# Built for the CPU it runs on (GGML_NATIVE, i.e. -march=native: how a fair expert builds it), never taken from pip's
# wheel cache (a wheel built on another CPU could use instructions this one lacks). Every version, the build tools'
# included, is held by scripts/sdcpp-constraints.txt.
set -euo pipefail
venv=$(realpath -m "${1:-$(dirname "$0")/../.venv-sdcpp}")
cd "$(dirname "$0")/.."

. scripts/lib.sh

# 1. A C/C++ compiler, a Python >= 3.11 and the virtual environment.
command -v c++ >/dev/null || apt_install g++
command -v c++ >/dev/null || { say "no C++ compiler (c++): install g++ and run this again"; exit 1; }
make_venv "$venv"

# 2. The build tools, then stable-diffusion-cpp-python compiled against them for this CPU.
stamp=$venv/.sdcpu-sdcpp-installed
if [ ! -f "$stamp" ] || [ scripts/sdcpp-constraints.txt -nt "$stamp" ] || [ scripts/setup-sdcpp.sh -nt "$stamp" ]; then
    say "installing the build tools into $venv"
    "$venv/bin/python" -m pip install -q --no-deps -c scripts/sdcpp-constraints.txt \
        cmake ninja scikit-build-core pathspec packaging
    say "compiling stable-diffusion-cpp-python for this CPU (-march=native): several minutes"
    CMAKE_ARGS="-DGGML_NATIVE=ON" "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation --no-cache-dir \
        --force-reinstall --no-binary stable-diffusion-cpp-python -r scripts/sdcpp-constraints.txt
    "$venv/bin/python" -c 'import stable_diffusion_cpp' || {
        say "stable_diffusion_cpp failed to import; run: $venv/bin/python -c 'import stable_diffusion_cpp'"; exit 1; }
    touch "$stamp"
fi
say "stable-diffusion.cpp ready: $venv/bin/python"
