"""Where sdcpu keeps what it builds and caches: models, compiled graphs, exported IR, tuned profiles."""

import os
from pathlib import Path


def sdcpu_home() -> Path:
    """$SDCPU_HOME, else ~/.cache/sdcpu."""
    return Path(os.environ.get("SDCPU_HOME", Path.home() / ".cache" / "sdcpu"))
