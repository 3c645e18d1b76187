"""The versions of sdcpu, Python and the packages whose versions change what sdcpu measures."""

import platform
from importlib import metadata

PACKAGES = ("sdcpu", "torch", "diffusers", "transformers", "accelerate", "openvino", "intel_extension_for_pytorch")


def installed(names=PACKAGES) -> dict:
    """Each package's version, None where it is not installed."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def versions() -> dict:
    """sdcpu's, Python's and each package's version (None: not installed)."""
    found = installed()
    return {"sdcpu": found.pop("sdcpu"), "python": platform.python_version(), **found}
