"""What sdcpu writes into $SDCPU_HOME is built once, by one process at a time, and never left half-written.

- `exclusive(ARTIFACT)` holds an flock on `.NAME.lock` beside ARTIFACT: a second process building the same artifact
  (two `sdcpu generate` on a fresh home) waits, then finds it built. The lock goes with the process, even killed.
- `staging(ARTIFACT, suffix)` is where this process writes ARTIFACT before renaming it into place:
  `.STEM.PID[SUFFIX]` beside it. `remove_stale(ARTIFACT)`, called under the lock, removes the staging of processes that
  are gone (killed mid-write: SIGKILL, out of memory); each builder removes its own in a `finally`.
"""

import contextlib
import fcntl
import os
import re
import shutil
from pathlib import Path


@contextlib.contextmanager
def exclusive(artifact: Path):
    """Hold the lock of ARTIFACT (its folder is made if needed) for the block; waits while another process holds it."""
    artifact.parent.mkdir(parents=True, exist_ok=True)
    with open(artifact.with_name(f".{artifact.name}.lock"), "a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
        yield


def staging(artifact: Path, suffix: str = "", pid: int | None = None) -> Path:
    """Where process PID (this one by default) writes ARTIFACT before renaming it into place."""
    return artifact.with_name(f".{artifact.stem}.{os.getpid() if pid is None else pid}{suffix}")


def remove_stale(artifact: Path) -> list[Path]:
    """Remove the staging of ARTIFACT left by processes that no longer run (and any of this process's own, from an
    earlier process that had its pid); the paths removed."""
    pattern = re.compile(rf"\.{re.escape(artifact.stem)}\.(\d+)(\..*)?")
    removed = []
    for path in artifact.parent.glob(f".{artifact.stem}.*"):
        match = pattern.fullmatch(path.name)
        if match and (int(match[1]) == os.getpid() or not _alive(int(match[1]))):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_text(path: Path, text: str) -> None:
    """Write TEXT to PATH through this process's staging file: readers see the old file or the new, never a part."""
    part = staging(path, path.suffix + ".part")
    try:
        part.write_text(text)
        os.replace(part, path)
    finally:
        remove(part)


def remove(*paths: Path) -> None:
    """Remove PATHS (files or folders) where they exist."""
    for path in paths:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
