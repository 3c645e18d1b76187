# Shell functions shared by scripts/setup.sh and scripts/setup-optimum.sh (sourced, not run).

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

make_venv() {  # make_venv DIR: a virtual environment of a Python >= 3.11 ($PYTHON, else python3.11 or python3)
    PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { say "$PYTHON is older than Python 3.11"; exit 1; }
    [ -x "$1/bin/python" ] && return
    if ! "$PYTHON" -m venv "$1" 2>/dev/null; then  # Debian splits venv/ensurepip into python3.X-venv
        rm -rf "$1"
        apt_install "python3.$("$PYTHON" -c 'import sys; print(sys.version_info[1])')-venv"
        "$PYTHON" -m venv "$1"
    fi
}

pip_extra_index() {  # the pip options for $SDCPU_TORCH_INDEX, an extra index for torch's CPU build
    [ -z "${SDCPU_TORCH_INDEX:-}" ] || echo "--extra-index-url $SDCPU_TORCH_INDEX"
}
