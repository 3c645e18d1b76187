"""What a measuring child (a bench rung, a tune probe, a peer's script, verify's probe) hands its parent: one JSON
line, its last on stdout, or its failure read from stderr."""

import json
import sys
from pathlib import Path


def child_row(stdout: str, stderr_lines, code: int) -> dict:
    """A measuring child's result: its last stdout line as JSON, or {"failed": its last stderr line (exit CODE)}."""
    lines = stdout.strip().splitlines()
    if code == 0 and lines:
        return json.loads(lines[-1])
    errors = [line.strip() for line in stderr_lines if line.strip()]
    return {"failed": f"{errors[-1] if errors else 'no output'} (exit {code})"}


def write_row(row: dict, out=None) -> None:
    """A measuring child's result as child_row reads it: one JSON line on OUT (default stdout; a child whose libraries
    print on stdout writes it to a copy of the real one). The one place a child below the commands prints."""
    print(json.dumps(row), file=out or sys.stdout, flush=True)


def memory_bytes(field: str, pid: int | str = "self") -> int:
    """A memory FIELD of process PID's /proc status in bytes: VmRSS (resident now), VmHWM (its peak since exec)."""
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith(f"{field}:"))
    return int(line.split()[1]) * 1024  # kB


def peak_rss_bytes() -> int:
    """This process's peak RSS in bytes since its exec: VmHWM on Linux. Not getrusage's ru_maxrss, which Linux carries
    from the parent into a child across fork and exec: a child started by a large process (a bench runner that has just
    built a random model) would report the parent's size. ru_maxrss where there is no /proc."""
    if Path("/proc/self/status").is_file():
        return memory_bytes("VmHWM")
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss_gib() -> float:
    """peak_rss_bytes in GiB."""
    return peak_rss_bytes() / 2**30
