"""Throughput mode: one copy of a command per LaunchPlan, signals forwarded to every copy, non-zero if any failed.

The copies die with the supervisor, even SIGKILLed (Linux's parent-death signal, SIGTERM: they drain as on a plain
stop), and a signal that comes while they are being started is held until all are, then reaches every one.
"""

import ctypes
import logging
import os
import signal
import subprocess

from sdcpu.errors import UsageError

log = logging.getLogger(__name__)
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_instances(plans, argv, environ) -> int:
    """Start every instance, wait for all; the exit code is the first failure's (128+N for signal N), else 0.
    Children get their own process group, so a terminal's Ctrl-C reaches them once, through this forwarder."""
    children: list[subprocess.Popen] = []

    def forward(signum, _frame):
        log.info("forwarding signal %d to %d instances", signum, len(children))
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)  # held while the copies start: none is missed
    try:
        for plan in plans:
            children.append(subprocess.Popen([*plan.argv_prefix, *argv], env=plan.environ(environ), process_group=0,
                                             preexec_fn=_dies_with(os.getpid())))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)  # a signal held meanwhile is forwarded to all now
        codes = [child.wait() for child in children]
    except OSError as err:
        for child in children:
            child.kill()
            child.wait()
        raise UsageError(f"cannot run {argv[0]}: {err.strerror}") from err
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failed = [(index, code) for index, code in enumerate(codes) if code != 0]
    for index, code in failed:
        log.error("instance %d %s", index, f"exited with {code}" if code > 0 else f"was killed by signal {-code}")
    if not failed:
        return 0
    code = failed[0][1]
    return code if code > 0 else 128 - code


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _dies_with(parent: int):
    """What a copy runs before exec: unblock the signals the supervisor holds, ask for SIGTERM when the supervisor
    dies (kept across exec, also through numactl/taskset), and exit if it died already."""

    def prepare():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return prepare
