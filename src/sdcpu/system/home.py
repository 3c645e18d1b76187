"""Where sdcpu keeps what it builds and caches: models, compiled graphs, exported IR, tuned profiles.

What is there runs as code (inductor's cache holds pickles and shared objects, IR and profiles steer what runs), so
the folder is made private (0700) and one that another user owns or that others may write to is refused, unless
SDCPU_HOME_SHARED=1 says the sharing is meant (a team cache on a machine whose users trust each other).
"""

import os
import shutil
import stat
from pathlib import Path

from sdcpu.errors import UsageError

SHARED_VARIABLE = "SDCPU_HOME_SHARED"


def sdcpu_home() -> Path:
    """$SDCPU_HOME, else ~/.cache/sdcpu: made 0700 if missing, refused if others could write to it."""
    home = Path(os.environ.get("SDCPU_HOME", Path.home() / ".cache" / "sdcpu"))
    home.parent.mkdir(parents=True, exist_ok=True)
    try:
        home.mkdir(mode=0o700)
    except FileExistsError:
        pass
    if os.environ.get(SHARED_VARIABLE) != "1":
        check_private(home)
    return home


def check_private(home: Path) -> None:
    """Refuse HOME when another user owns it or its group or others may write to it."""
    if why := not_private(home.stat()):
        raise UsageError(f"SDCPU_HOME {home} {why}: what sdcpu caches there runs as code; chmod 700 it, pick another "
                         f"SDCPU_HOME, or set {SHARED_VARIABLE}=1 if that sharing is meant")


def not_private(info: os.stat_result) -> str | None:
    """Why a file or folder of stat INFO is not this user's alone (another owns it, or its group or others may write
    to it), or None."""
    if info.st_uid != os.getuid():
        return f"is owned by uid {info.st_uid}, not you (uid {os.getuid()})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by others (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def check_space(folder: Path, need_bytes: int, what: str) -> None:
    """Refuse, before any work, to write WHAT (NEED_BYTES) into FOLDER where its file system has less free: a full
    disk would otherwise fail the write minutes in, with the file system's own cryptic error."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise UsageError(f"{what} writes about {need_bytes / 1e9:.1f} GB to {folder}, which has {free / 1e9:.1f} GB "
                         "free: free some space there or point SDCPU_HOME at a larger disk")
