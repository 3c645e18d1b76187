"""`sdcpu launch [options] -- COMMAND...`: run any program under the system rung: allocator, OpenMP runtime, threads
and CPU pinning, all set before the program starts. Without options only OMP_NUM_THREADS is set (usable physical cores);
--auto starts from what `sdcpu info` shows for this machine, and any other option given overrides that choice."""

import argparse
import dataclasses
import logging
import os

from sdcpu.errors import UsageError
from sdcpu.recipes import auto
from sdcpu.system import hardware, launcher, verify
from sdcpu.system.instances import run_instances

log = logging.getLogger(__name__)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def register(sub):
    p = sub.add_parser("launch", help="run a command with a tuned allocator, OpenMP, threads and pinning",
                       description=__doc__)
    p.add_argument("--auto", action="store_true", help="start from the options auto picks on this machine")
    p.add_argument("--allocator", choices=("jemalloc", "tcmalloc", "default"), help="memory allocator (LD_PRELOAD)")
    p.add_argument("--openmp", choices=("iomp", "gomp", "default"),
                   help="iomp: preload Intel OpenMP; gomp: bind torch's GNU OpenMP threads; default: leave it")
    p.add_argument("--threads", type=_positive,
                   help="OpenMP threads per instance (default: usable physical cores / instances)")
    p.add_argument("--pin", action="store_true",
                   help="bind each instance to its own physical cores (numactl, else taskset)")
    p.add_argument("--no-bind", action="store_true",
                   help="with --pin, leave OpenMP threads unbound (KMP_AFFINITY/OMP_PROC_BIND unset): for programs whose "
                   "compute runs on other threads too, e.g. OpenVINO's, which would inherit the main thread's one core")
    p.add_argument("--instances", type=_positive, help="run N copies, each on its own share of the cores (default 1)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (shell line, variables and why) and exit")
    p.add_argument("--verify", action="store_true",
                   help="first prove the plan in a Python child under each instance's settings; exit 1 on any failure")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the program and its arguments, after --")
    p.set_defaults(func=run)


def _options(args, cpu, libs, tools) -> launcher.LaunchOptions:
    base = auto.system_options(cpu, os.environ, libs, tools)[0] if args.auto else launcher.LaunchOptions()
    return dataclasses.replace(
        base,
        allocator=args.allocator or base.allocator,
        openmp=base.openmp if args.openmp is None else {"default": None}.get(args.openmp, args.openmp),
        threads=args.threads or base.threads,
        pin=args.pin or base.pin,
        instances=args.instances or base.instances,
        bind_threads=base.bind_threads and not args.no_bind,
    )


def run(args) -> int:
    # 1. Check the command line, then look at the machine: CPUs, libraries, the pinning tools that work.
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command and not (args.dry_run or args.verify):
        raise UsageError("nothing to run: put the command after --, e.g. sdcpu launch --pin -- python script.py")
    cpu = hardware.detect()
    libs, tools = launcher.look_around(cpu, os.environ, pinning=args.auto or args.pin)

    # 2. Plan every instance.
    plans = launcher.plan(cpu, _options(args, cpu, libs, tools), os.environ, libs, tools)
    if args.dry_run:
        for index, plan in enumerate(plans):
            print(f"# instance {index}\n" if len(plans) > 1 else "", launcher.format_plan(plan, command or ["COMMAND"]),
                  sep="", end="\n\n" if index < len(plans) - 1 else "\n")
        return 0
    for note in plans[0].notes:
        log.info("%s", note)
    if plans[0].missing:
        log.warning("asked for but not applied: %s (sdcpu launch --dry-run says why)", ", ".join(plans[0].missing))

    # 3. Prove the plan in a child, if asked.
    if args.verify:
        failed = False
        for index, plan in enumerate(plans):
            snap, failures = verify.probe(plan, os.environ)
            print(f"instance {index}: {verify.describe(snap) if snap else 'no snapshot'}")
            print("\n".join(f"  FAIL {failure}" for failure in failures) if failures else "  OK")
            failed = failed or bool(failures)
        if failed or not command:
            return 1 if failed else 0

    # 4. Run: one instance replaces this process, several are supervised.
    if len(plans) == 1:
        try:
            launcher.apply(plans[0], command)
        except OSError as err:
            raise UsageError(f"cannot run {command[0]}: {err.strerror}") from err
    return run_instances(plans, command, os.environ)
