"""Ladders of SD 1.5 UNet forwards (benchmarks/unet_forward.py), one fresh process per rung, side by side in one run.

- `launcher`: the system rung, eager fp32 under each launcher setting, then throughput mode (2 instances x 1 thread vs
  1 instance x 2 threads).
- `framework`: each framework recipe with no launcher, in a fresh $SDCPU_HOME (random:sd15 linked in) so the first
  process of a compiling recipe compiles cold and a second one (`warm`) reads the caches. fp32 and bf16 matmul peaks
  are measured first, in this process.

Writes OUT/results.jsonl (one row per process) and prints a markdown table.

    python benchmarks/unet_ladder.py launcher --runs 5 --out bench-out/launcher
    python benchmarks/unet_ladder.py framework --runs 3 --out bench-out/framework
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UNET = str(Path(__file__).with_name("unet_forward.py"))
LAUNCH = [sys.executable, "-m", "sdcpu", "launch"]
SEED = ["--allocator", "jemalloc", "--openmp", "iomp", "--pin"]
LAUNCHER = [  # (rung, launcher prefix)
    ("no launcher", []),
    ("jemalloc", [*LAUNCH, "--allocator", "jemalloc", "--"]),
    ("jemalloc + iomp + pin", [*LAUNCH, *SEED, "--"]),
    ("tcmalloc + iomp + pin", [*LAUNCH, "--allocator", "tcmalloc", "--openmp", "iomp", "--pin", "--"]),
    ("throughput: 2 instances x 1 thread", [*LAUNCH, *SEED, "--instances", "2", "--"]),
    ("throughput: 1 instance x 2 threads", [*LAUNCH, *SEED, "--threads", "2", "--"]),
]
FRAMEWORK = [  # (recipe, runs a second time on a warm cache)
    ("baseline", False), ("channels_last", False), ("compile", True), ("channels_last,compile", True),
    ("openvino=f32", True), ("bf16!", False), ("channels_last,bf16!,compile", True), ("openvino=bf16", True),
]


def cpu_seconds() -> tuple[float, float, float]:
    """(machine busy CPU s, hypervisor steal s, CPU s of our finished children) so far."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (user + nice + system + irq + softirq) / tick, steal / tick, children.ru_utime + children.ru_stime


def run_rung(rung, command, env=None) -> list[dict]:
    """Run one rung; each row also says how much CPU other processes (and the hypervisor) took meanwhile."""
    print(f"# {rung}: {' '.join(command)}", file=sys.stderr, flush=True)
    before, started = cpu_seconds(), time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    after = cpu_seconds()
    noise = {"wall_s": round(time.perf_counter() - started, 1),
             "other_cpu_s": round((after[0] - before[0]) - (after[2] - before[2]), 1),
             "steal_s": round(after[1] - before[1], 1)}
    rows = [{"rung": rung, **json.loads(line), **noise} for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode or not rows:
        return [{"rung": rung, "failed": result.stderr.strip().splitlines()[-1:] or [f"exit {result.returncode}"],
                 **noise}]
    return rows


def launcher_ladder(runs, out) -> tuple[list[dict], str]:
    rows = [row for rung, prefix in LAUNCHER for row in run_rung(rung, [*prefix, sys.executable, UNET, "--runs", str(runs)])]
    base = next(r["median_s"] for r in rows if r["rung"] == "no launcher")
    lines = ["| rung | instances x threads | median s / forward (runs) | vs no launcher | forwards / min | GFLOP/s "
             "| mapped | verify | other CPU s / wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for rung, _ in LAUNCHER:
        group = [r for r in rows if r["rung"] == rung]
        if "failed" in group[0]:
            lines.append(f"| {rung} | failed: {group[0]['failed']} |")
            continue
        median = statistics.median(r["median_s"] for r in group)
        per_minute = sum(60 / r["median_s"] for r in group)
        times = "; ".join(", ".join(f"{t:.2f}" for t in r["times_s"]) for r in group)
        lines.append(
            f"| {rung} | {len(group)} x {group[0]['threads']} | {median:.2f} ({times}) | {base / median:.2f}x "
            f"| {per_minute:.2f} | {sum(r['achieved_gflop_s'] for r in group):.0f} | {', '.join(group[0]['mapped'])} "
            f"| {'; '.join(f for r in group for f in r['verify_failures']) or 'OK'} "
            f"| {group[0]['other_cpu_s']} / {group[0]['wall_s']} |")
    return rows, "\n".join(lines)


def framework_ladder(runs, out) -> tuple[list[dict], str]:
    from sdcpu.bench import peak
    from sdcpu.system.home import sdcpu_home

    peaks = {dtype: peak.matmul_peak_gflops(dtype) for dtype in ("float32", "bfloat16")}
    home = Path(tempfile.mkdtemp(prefix="sdcpu-bench-", dir=out))
    (home / "models").symlink_to(sdcpu_home() / "models")  # built models shared; compile caches start empty
    env = {**os.environ, "SDCPU_HOME": str(home)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    reference = str(out / "eager.pt")
    rows = []
    for recipe, warm in FRAMEWORK:
        io = ["--save", reference] if recipe == "baseline" else ["--reference", reference]
        for rung in (recipe, f"{recipe} (warm)")[: 1 + warm]:
            rows += run_rung(rung, [sys.executable, UNET, "--recipe", recipe, "--runs", str(runs), *io], env)
    base = rows[0]["median_s"]
    lines = [f"fp32 matmul peak {peaks['float32']:.0f} GFLOP/s, bf16 {peaks['bfloat16']:.0f} GFLOP/s "
             "(2048^3 torch.mm, best of 2 s)", "",
             "| recipe | median s / forward (runs) | vs eager | GFLOP/s | % of fp32 peak | first call s | steps s "
             "| max abs vs eager | peak RSS GiB | other CPU s / wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['rung']} | failed: {r['failed']} |")
            continue
        gflop_s = r["achieved_gflop_s"]
        diff = "-" if r["max_abs_vs_reference"] is None else f"{r['max_abs_vs_reference']:.1e}"
        lines.append(
            f"| {r['rung']} | {r['median_s']:.2f} ({', '.join(f'{t:.2f}' for t in r['times_s'])}) "
            f"| {base / r['median_s']:.2f}x | {gflop_s:.0f} | {100 * gflop_s / peaks['float32']:.0f}% "
            f"| {r['first_call_s']:.1f} | {sum(s['s'] for s in r['steps']):.1f} | {diff} | {r['peak_rss_gib']:.2f} "
            f"| {r['other_cpu_s']} / {r['wall_s']} |")
    skipped = {f"{s['step']}: {s['detail']}" for r in rows for s in r.get("steps", ()) if not s["applied"]}
    return rows, "\n".join(lines + [f"- skipped: {s}" for s in sorted(skipped)])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ladder", choices=("launcher", "framework"))
    parser.add_argument("--runs", type=int, default=3, help="timed forwards per process after the first call")
    parser.add_argument("--out", type=Path, default=Path("bench-out/unet"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows, table = (launcher_ladder if args.ladder == "launcher" else framework_ladder)(args.runs, args.out.resolve())
    with open(args.out / "results.jsonl", "w") as results:
        results.writelines(json.dumps(row) + "\n" for row in rows)
    print(table)


if __name__ == "__main__":
    main()
