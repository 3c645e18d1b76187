"""Proof of what a launch really applied, read from inside the process: `check(snapshot())` -> failures.

The snapshot holds the facts (allocator and OpenMP libraries mapped per /proc/self/maps, torch's thread count, the
affinity mask, the launcher's variables in force); `check` compares them with what the launcher asked for, which the
plan leaves in the child's environment (SDCPU_LAUNCH_LIBRARIES, SDCPU_LAUNCH_CPUS, OMP_NUM_THREADS, LD_PRELOAD).
A bench child calls both from inside its own process; `sdcpu launch --verify` runs `python -m sdcpu.system.verify` under
each instance's plan (`probe`).
"""

import json
import os
import re
import subprocess
from pathlib import Path

from sdcpu.system.hardware import format_cpu_list, parse_cpu_list
from sdcpu.system.launcher import ENV_VARS, LaunchPlan, library_kind, LIBRARY_PREFIXES, python_module


def mapped_paths(maps_text: str) -> tuple[str, ...]:
    """Distinct file paths in a /proc/PID/maps text, in map order."""
    paths = (line.split(maxsplit=5)[5] for line in maps_text.splitlines() if len(line.split(maxsplit=5)) == 6)
    return tuple(dict.fromkeys(path for path in paths if path.startswith("/")))


def process_affinity() -> frozenset[int]:
    """The union of every thread's CPU mask: the process's pinning. The main thread's own mask is not it, because
    OpenMP runtimes (KMP_AFFINITY, OMP_PROC_BIND) bind each thread, the main one included, to a single core."""
    cpus: set[int] = set()
    for status in Path("/proc/self/task").glob("*/status"):
        try:
            text = status.read_text()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        cpus |= parse_cpu_list(re.search(r"^Cpus_allowed_list:\s*(\S+)", text, re.MULTILINE).group(1))
    return frozenset(cpus)


def snapshot() -> dict:
    import torch

    preload = [entry for entry in os.environ.get("LD_PRELOAD", "").replace(" ", ":").split(":") if entry]
    real_preload = {entry: os.path.realpath(entry) for entry in preload}
    maps = mapped_paths(Path("/proc/self/maps").read_text())
    return {
        "pid": os.getpid(),
        "mapped": [path for path in maps if library_kind(path) or path in real_preload.values()],
        "preload": real_preload,
        "torch_threads": torch.get_num_threads(),
        "affinity": format_cpu_list(process_affinity()),
        "env": {var.name: os.environ[var.name] for var in ENV_VARS if var.name in os.environ},
    }


def check(snap: dict) -> list[str]:
    """Everything asked for that did not take effect, one line each; empty when the launch is proven."""
    env, failures = snap["env"], []
    kinds = {library_kind(path) for path in snap["mapped"]}
    for kind in filter(None, env.get("SDCPU_LAUNCH_LIBRARIES", "").split(",")):
        if kind not in kinds:
            failures.append(f"{kind} was asked for but no {LIBRARY_PREFIXES[kind]}* library is mapped")
    for entry, real in snap["preload"].items():
        if real not in snap["mapped"]:
            failures.append(f"LD_PRELOAD entry {entry} is not mapped (ld.so skips a missing or foreign library)")
    if "OMP_NUM_THREADS" in env and snap["torch_threads"] != int(env["OMP_NUM_THREADS"].split(",")[0]):
        failures.append(f"torch uses {snap['torch_threads']} threads, OMP_NUM_THREADS is {env['OMP_NUM_THREADS']}")
    if "SDCPU_LAUNCH_CPUS" in env and parse_cpu_list(snap["affinity"]) != parse_cpu_list(env["SDCPU_LAUNCH_CPUS"]):
        failures.append(f"affinity is {snap['affinity']}, the plan pinned {env['SDCPU_LAUNCH_CPUS']}")
    return failures


def describe(snap: dict) -> str:
    libraries = ", ".join(os.path.basename(path) for path in snap["mapped"]) or "none of jemalloc/tcmalloc/iomp/gomp"
    return f"mapped {libraries}; torch threads {snap['torch_threads']}; affinity {snap['affinity']}"


def probe(plan: LaunchPlan, environ) -> tuple[dict, list[str]]:
    """Snapshot a fresh Python child started exactly as the plan starts its command; (snapshot, failures)."""
    command = [*plan.argv_prefix, *python_module("sdcpu.system.verify")]
    result = subprocess.run(command, env=plan.environ(environ), capture_output=True, text=True)
    if result.returncode != 0:
        return {}, [f"the probe child failed (exit {result.returncode}): {result.stderr.strip()[-500:]}"]
    snap = json.loads(result.stdout.strip().splitlines()[-1])
    return snap, check(snap)


if __name__ == "__main__":
    from sdcpu.system.children import write_row

    write_row(snapshot())
