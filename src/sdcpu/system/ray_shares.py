"""A Ray worker process's share of its node's physical cores (`batch --ray`'s actors, `serve --ray`'s replicas): the
shares are the pinned instances of the launch plan (as `serve --instances` splits the cores), each claimed with an
flock the kernel releases when its holder dies, so a restarted actor or replica takes the share its predecessor had.
Also the word both commands' `--ray` takes for a Ray started on this machine."""

import fcntl
import os
import stat
import tempfile
from pathlib import Path

from sdcpu.errors import UsageError
from sdcpu.system import launcher
from sdcpu.system.home import not_private

LOCAL = "local"  # --ray without an address (batch and serve): ray.init's own word for a Ray started here


def claim(cpu, cores: int, folder: Path | None = None):
    """The first share of CORES of CPU's usable physical cores no live process holds: (the lock's file, to keep open
    while this process runs; the share's CPUs), or None where every share is taken. FOLDER holds the locks (by
    default the node's temporary folder)."""
    options = launcher.LaunchOptions(threads=cores, instances=max(1, len(cpu.usable_physical_cores) // cores), pin=True)
    folder = folder or Path(tempfile.gettempdir()) / f"sdcpu-ray-shares-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.lstat()  # not followed: a link another user planted in the shared temporary folder is refused
    why = "is not a folder" if not stat.S_ISDIR(info.st_mode) else not_private(info)
    if why:
        raise UsageError(f"{folder} {why}: another user could hold or plant the core shares' locks there; remove it")
    for index, plan in enumerate(launcher.plan(cpu, options, {}, {})):
        lock = open(folder / f"{index}.lock", "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return lock, plan.cpus
    return None


def pin(cpus) -> None:
    """Pin every thread of this process (Ray's own too: the share is this process's) to CPUS, and torch's threads to
    as many."""
    import torch

    for thread in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(thread), cpus)
    torch.set_num_threads(len(cpus))
