"""Throughput mode: one copy of a command per LaunchPlan, signals forwarded to every copy, non-zero if any failed."""

import logging
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
    try:
        for plan in plans:
            children.append(subprocess.Popen([*plan.argv_prefix, *argv], env=plan.environ(environ), process_group=0))
        codes = [child.wait() for child in children]
    except OSError as err:
        for child in children:
            child.kill()
            child.wait()
        raise UsageError(f"cannot run {argv[0]}: {err.strerror}") from err
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failed = [(index, code) for index, code in enumerate(codes) if code != 0]
    for index, code in failed:
        log.error("instance %d %s", index, f"exited with {code}" if code > 0 else f"was killed by signal {-code}")
    if not failed:
        return 0
    code = failed[0][1]
    return code if code > 0 else 128 - code
