"""The system rung, measured: one SD 1.5 UNet forward (benchmarks/launcher_unet.py) under each launcher setting, in a
fresh process each, side by side; then throughput mode, 2 instances x 1 thread vs 1 instance x 2 threads.
Writes OUT/results.jsonl (one row per process) and prints a markdown table.

    python benchmarks/launcher_ladder.py --runs 5 --out bench-out/launcher
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

UNET = str(Path(__file__).with_name("launcher_unet.py"))
LAUNCH = [sys.executable, "-m", "sdcpu", "launch"]
SEED = ["--allocator", "jemalloc", "--openmp", "iomp", "--pin"]
RUNGS = [  # (name, launcher prefix)
    ("no launcher", []),
    ("jemalloc", [*LAUNCH, "--allocator", "jemalloc", "--"]),
    ("jemalloc + iomp + pin", [*LAUNCH, *SEED, "--"]),
    ("tcmalloc + iomp + pin", [*LAUNCH, "--allocator", "tcmalloc", "--openmp", "iomp", "--pin", "--"]),
    ("throughput: 2 instances x 1 thread", [*LAUNCH, *SEED, "--instances", "2", "--"]),
    ("throughput: 1 instance x 2 threads", [*LAUNCH, *SEED, "--threads", "2", "--"]),
]


def cpu_seconds() -> tuple[float, float, float]:
    """(machine busy CPU s, hypervisor steal s, CPU s of our finished children) so far."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (user + nice + system + irq + softirq) / tick, steal / tick, children.ru_utime + children.ru_stime


def run_rung(name, prefix, runs) -> list[dict]:
    """Run one rung; each row also says how much CPU other processes (and the hypervisor) took meanwhile."""
    command = [*prefix, sys.executable, UNET, "--runs", str(runs)]
    print(f"# {name}: {' '.join(command)}", file=sys.stderr, flush=True)
    before, started = cpu_seconds(), time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    after = cpu_seconds()
    noise = {"wall_s": round(time.perf_counter() - started, 1),
             "other_cpu_s": round((after[0] - before[0]) - (after[2] - before[2]), 1),
             "steal_s": round(after[1] - before[1], 1)}
    return [{"rung": name, **json.loads(line), **noise} for line in result.stdout.splitlines() if line.startswith("{")]


def table(rows: list[dict]) -> str:
    base = next(r["median_s"] for r in rows if r["rung"] == "no launcher")
    lines = ["| rung | instances x threads | median s / forward (runs) | vs no launcher | forwards / min | GFLOP/s "
             "| mapped | verify | other CPU s / wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, _ in RUNGS:
        group = [r for r in rows if r["rung"] == name]
        median = statistics.median(r["median_s"] for r in group)
        per_minute = sum(60 / r["median_s"] for r in group)
        runs = "; ".join(", ".join(f"{t:.2f}" for t in r["times_s"]) for r in group)
        lines.append(
            f"| {name} | {len(group)} x {group[0]['threads']} | {median:.2f} ({runs}) | {base / median:.2f}x "
            f"| {per_minute:.2f} | {sum(r['achieved_gflop_s'] for r in group):.0f} | {', '.join(group[0]['mapped'])} "
            f"| {'; '.join(f for r in group for f in r['verify_failures']) or 'OK'} "
            f"| {group[0]['other_cpu_s']} / {group[0]['wall_s']} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="timed forwards per process after one warm-up")
    parser.add_argument("--out", type=Path, default=Path("bench-out/launcher"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(args.out / "results.jsonl", "w") as results:
        for name, prefix in RUNGS:
            for row in run_rung(name, prefix, args.runs):
                results.write(json.dumps(row) + "\n")
                results.flush()
                rows.append(row)
    print(table(rows))


if __name__ == "__main__":
    main()
