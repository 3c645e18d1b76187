"""`sdcpu info`: what this machine is, what sdcpu runs on, and what it would choose here and why."""

import json

from sdcpu.recipes import auto, profiles
from sdcpu.system import hardware
from sdcpu.system.versions import versions

X86_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8")
ARM_FLAGS = ("asimd", "sve", "bf16", "i8mm")


def register(sub):
    p = sub.add_parser("info", help="show this machine, versions and sdcpu's choices", description=__doc__)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(func=run)


def collect() -> dict:
    import torch

    cpu = hardware.detect()
    recipe, reasons = auto.recipe(cpu)
    tuned = profiles.find(cpu, "high")  # info knows no model: the most recent profile for this machine and versions
    isa = X86_FLAGS if cpu.arch in ("x86_64", "i686") else ARM_FLAGS
    return {
        "versions": versions(),
        "cpu": cpu.to_dict(),
        "isa": {flag: flag in cpu.flags for flag in isa},
        "torch": {
            "num_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn": torch.backends.mkldnn.is_available(),
        },
        "bf16": {"native": cpu.native_bf16, "reason": cpu.native_bf16_reason},
        "auto": {"recipe": str(recipe), "reasons": list(reasons)},
        "profile": str(tuned.path) if tuned else None,
    }


LIMITED = " (this cgroup's limit, below the machine's memory: what auto's memory fit plans for)"


def run(args) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    cpu = info["cpu"]
    rows = [
        ("versions", ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)),
        ("cpu", f"{cpu['model_name']} ({cpu['vendor']}, {cpu['arch']})"),
        ("cores", f"{cpu['sockets']} socket(s), {cpu['physical_cores']} physical cores, {cpu['logical_cpus']} logical CPUs, "
                  f"{len(cpu['numa_nodes'])} NUMA node(s)"),
        ("usable", f"CPUs {hardware.format_cpu_list(cpu['usable_cpus'])}"
                   + (f", cgroup quota {cpu['cpu_quota']:g} CPUs" if cpu["cpu_quota"] else "")),
        ("memory", f"{cpu['memory_bytes'] / 2**30:.1f} GiB" + (LIMITED if cpu["memory_limit"] else "")),
        ("isa", " ".join(f"{flag}{'+' if present else '-'}" for flag, present in info["isa"].items())),
        ("torch", f"{info['torch']['num_threads']} threads, CPU capability {info['torch']['cpu_capability']}, "
                  f"oneDNN {'yes' if info['torch']['mkldnn'] else 'no'}"),
        ("bf16", f"{'native' if info['bf16']['native'] else 'emulated'}: {info['bf16']['reason']}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"\nauto recipe: {info['auto']['recipe']}")
    print(f"tuned profile: {info['profile']}" if info["profile"] else
          "tuned profile: none for this machine and versions (`sdcpu tune` measures one)")
    print("\n".join(f"- {reason}" for reason in info["auto"]["reasons"]))
    print("\nlaunch plan auto applies (sdcpu launch --auto --dry-run):")
    print(auto.describe_plan(hardware.detect()).split("\n\n", 1)[1])
    return 0
