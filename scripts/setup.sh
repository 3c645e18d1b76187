#!/usr/bin/env bash
# Set-up for a fresh Debian/Ubuntu machine with Python 3.11: Debian packages (when root), .venv, Python packages.
# Idempotent and quick when nothing changed. Environment: PYTHON (interpreter to use), SDCPU_TORCH_INDEX (an extra
# pip index for torch, e.g. PyTorch's CPU wheel index, where the default index would pick a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "sdcpu setup: $*" >&2; }

apt_install() {  # apt_install PKG...: install Debian packages when root, else say what is missing
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing Debian packages: $*"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    else
        say "not root (or no apt-get): cannot install $*; the launcher will note them as missing and carry on"
        say "to install them: sudo apt-get install $*"
    fi
}

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
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { say "$PYTHON is older than Python 3.11"; exit 1; }
if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv .venv 2>/dev/null; then  # Debian splits venv/ensurepip into python3.X-venv
        rm -rf .venv
        apt_install "python3.$("$PYTHON" -c 'import sys; print(sys.version_info[1])')-venv"
        "$PYTHON" -m venv .venv
    fi
fi

# 3. Python packages, every version held by constraints.txt (torch is the CPU build, 2.13.0).
stamp=.venv/.sdcpu-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    say "installing Python packages into .venv (first time: a few minutes)"
    extra=()
    [ -n "${SDCPU_TORCH_INDEX:-}" ] && extra=(--extra-index-url "$SDCPU_TORCH_INDEX")
    .venv/bin/python -m pip install -q "${extra[@]}" -c constraints.txt -e ".[test,openvino]"
    touch "$stamp"
fi
