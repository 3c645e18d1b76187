"""What this CPU is and what this process may use: `detect() -> CpuInfo`.

Every parser takes text (or a set), so tests feed canned machines (tests/fixtures/machines/); only the `read_*`
functions and `detect()` touch the live system. Topology comes from `lscpu -p`, else from /sys; identity and ISA flags
from /proc/cpuinfo; the usable CPUs from sched_getaffinity and the cgroup CPU quota; the usable memory from /proc/meminfo and the
cgroup memory limit (a container's `--memory`, a Kubernetes limit): the smaller of the two.
"""

import math
import os
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

# ISA flags the rest of sdcpu cares about, as Linux spells them (x86 `flags`, aarch64 `Features`).
X86_FLAGS = frozenset({
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni", "avx512_fp16",
    "avx_vnni", "amx_bf16", "amx_int8", "amx_tile", "amx_fp16",
})
ARM_FLAGS = frozenset({"asimd", "asimddp", "sve", "sve2", "bf16", "i8mm"})
ARM_IMPLEMENTERS = {"0x41": "ARM", "0x61": "Apple", "0xc0": "Ampere"}
ARM_PARTS = {"0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1", "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2"}


@dataclass(frozen=True)
class Core:
    """One physical core: its logical CPUs (SMT siblings, ascending), socket, NUMA node, and E-core marker."""

    socket: int
    node: int
    cpus: tuple[int, ...]
    efficiency: bool = False


@dataclass(frozen=True)
class NumaNode:
    id: int
    cpus: tuple[int, ...]
    physical_cores: int


@dataclass(frozen=True)
class CpuInfo:
    arch: str
    vendor: str
    model_name: str
    cores: tuple[Core, ...]
    flags: frozenset[str]
    affinity: frozenset[int]
    cpu_quota: float | None  # CPUs granted by the cgroup quota; None when unlimited
    memory_bytes: int  # what this process may use: the machine's memory, or the cgroup's limit where that is lower
    memory_limit: int | None = None  # the cgroup memory limit where it is below the machine's memory, else None

    @property
    def sockets(self) -> int:
        return len({core.socket for core in self.cores})

    @property
    def physical_cores(self) -> int:
        return len(self.cores)

    @property
    def logical_cpus(self) -> int:
        return sum(len(core.cpus) for core in self.cores)

    @property
    def threads_per_core(self) -> int:
        return max(len(core.cpus) for core in self.cores)

    @property
    def smt_siblings(self) -> tuple[tuple[int, ...], ...]:
        return tuple(core.cpus for core in self.cores if len(core.cpus) > 1)

    @property
    def hybrid(self) -> bool:
        return any(core.efficiency for core in self.cores)

    @property
    def numa_nodes(self) -> tuple[NumaNode, ...]:
        nodes = sorted({core.node for core in self.cores})
        return tuple(
            NumaNode(n, tuple(sorted(c for core in self.cores if core.node == n for c in core.cpus)),
                     sum(core.node == n for core in self.cores))
            for n in nodes
        )

    @property
    def usable_cpus(self) -> tuple[int, ...]:
        """Online logical CPUs in this process's affinity mask (the quota limits how many of them are worth using)."""
        return tuple(sorted(c for core in self.cores for c in core.cpus if c in self.affinity))

    @property
    def usable_physical_cores(self) -> tuple[int, ...]:
        """One logical CPU per usable physical core (lowest sibling), NUMA node by node, P cores before E cores,
        cut to the cgroup quota."""
        usable = [core for core in self.cores if any(c in self.affinity for c in core.cpus)]
        usable.sort(key=lambda core: (core.node, core.efficiency, core.cpus[0]))
        firsts = tuple(min(c for c in core.cpus if c in self.affinity) for core in usable)
        if self.cpu_quota is None:
            return firsts
        return firsts[: max(1, math.floor(self.cpu_quota))]

    @property
    def native_bf16(self) -> bool:
        return bool(self.flags & {"amx_bf16", "avx512_bf16", "bf16"})

    @property
    def native_bf16_reason(self) -> str:
        if "amx_bf16" in self.flags:
            return "AMX-BF16 tile units: bf16 matmuls run natively, much faster than fp32"
        if "avx512_bf16" in self.flags:
            return "AVX512_BF16 dot-product instructions (no AMX): bf16 runs natively"
        if "bf16" in self.flags:
            return "Armv8.6 BF16 instructions: bf16 runs natively"
        return "no AMX-BF16, AVX512_BF16 or Arm BF16: bf16 would be emulated, slower than fp32"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["flags"] = sorted(self.flags)
        data["affinity"] = sorted(self.affinity)
        data.update(
            sockets=self.sockets, physical_cores=self.physical_cores, logical_cpus=self.logical_cpus,
            threads_per_core=self.threads_per_core, hybrid=self.hybrid,
            numa_nodes=[asdict(node) for node in self.numa_nodes], usable_cpus=list(self.usable_cpus),
            usable_physical_cores=list(self.usable_physical_cores), native_bf16=self.native_bf16,
            native_bf16_reason=self.native_bf16_reason,
        )
        return data


@dataclass(frozen=True)
class MachineTexts:
    """The raw inputs of `from_texts`; `read_machine_texts()` fills it from the live system."""

    cpuinfo: str
    lscpu: str  # `lscpu -p=CPU,CORE,SOCKET,NODE` format
    affinity: frozenset[int]
    cpu_max: str  # cgroup v2 `cpu.max` format: "max 100000" or "QUOTA PERIOD"
    meminfo: str
    efficiency_cpus: str = ""  # /sys/devices/cpu_atom/cpus on hybrid Intel parts
    memory_max: str = "max"  # cgroup v2 `memory.max` format: "max" or bytes


def parse_cpu_list(text: str) -> frozenset[int]:
    """'0-3,8,10-11' -> {0, 1, 2, 3, 8, 10, 11}."""
    cpus = set()
    for part in text.replace("\n", ",").split(","):
        if "-" in part:
            low, high = part.split("-")
            cpus.update(range(int(low), int(high) + 1))
        elif part.strip():
            cpus.add(int(part))
    return frozenset(cpus)


def format_cpu_list(cpus) -> str:
    """{0, 1, 2, 3, 8} -> '0-3,8' (the form numactl, taskset and /proc use)."""
    runs: list[list[int]] = []
    for cpu in sorted(cpus):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def parse_cpuinfo(text: str) -> dict[str, str]:
    """The first processor block of /proc/cpuinfo as a dict (identity and flags are the same on every CPU)."""
    fields = {}
    for line in text.strip().split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def identity(cpuinfo: dict[str, str]) -> tuple[str, str, str, frozenset[str]]:
    """(arch, vendor, model name, normalised flags) from a parsed cpuinfo block; aarch64 has no 'model name'."""
    if "CPU implementer" in cpuinfo:
        implementer, part = cpuinfo["CPU implementer"], cpuinfo.get("CPU part", "")
        flags = frozenset(cpuinfo.get("Features", "").split()) & ARM_FLAGS
        return "aarch64", ARM_IMPLEMENTERS.get(implementer, implementer), ARM_PARTS.get(part, f"Arm part {part}"), flags
    flags = frozenset(cpuinfo.get("flags", "").split()) & X86_FLAGS
    return "x86_64", cpuinfo.get("vendor_id", "unknown"), cpuinfo.get("model name", "unknown"), flags


def parse_topology(lscpu_text: str, efficiency_cpus: frozenset[int] = frozenset()) -> tuple[Core, ...]:
    """Cores from `lscpu -p=CPU,CORE,SOCKET,NODE` rows; a blank column means 0 (socket, node) or its own core."""
    groups: dict[tuple[int, str], list[tuple[int, int]]] = {}
    for line in lscpu_text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cpu, core, socket, node = (line.split(",") + ["", "", ""])[:4]
        key = (int(socket or 0), core or f"cpu{cpu}")
        groups.setdefault(key, []).append((int(cpu), int(node or 0)))
    cores = [
        Core(socket, rows[0][1], tuple(sorted(c for c, _ in rows)), rows[0][0] in efficiency_cpus)
        for (socket, _), rows in groups.items()
    ]
    return tuple(sorted(cores, key=lambda core: core.cpus[0]))


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 cpu.max 'QUOTA PERIOD' -> CPUs granted (2.5 for '250000 100000'); 'max ...' -> None."""
    quota, period = text.split()
    return None if quota == "max" else int(quota) / int(period)


def parse_memory_max(text: str) -> int | None:
    """cgroup v2 memory.max 'BYTES' -> bytes; 'max' -> None."""
    text = text.strip()
    return None if text == "max" else int(text)


def parse_meminfo(text: str) -> int:
    match = re.search(r"^MemTotal:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024


def from_texts(texts: MachineTexts) -> CpuInfo:
    arch, vendor, model_name, flags = identity(parse_cpuinfo(texts.cpuinfo))
    total, limit = parse_meminfo(texts.meminfo), parse_memory_max(texts.memory_max)
    limit = limit if limit is not None and limit < total else None
    return CpuInfo(
        arch=arch, vendor=vendor, model_name=model_name,
        cores=parse_topology(texts.lscpu, parse_cpu_list(texts.efficiency_cpus)),
        flags=flags, affinity=texts.affinity, cpu_quota=parse_cpu_max(texts.cpu_max),
        memory_bytes=limit or total, memory_limit=limit,
    )


def sysfs_topology_text(sys_root: Path = Path("/sys")) -> str:
    """The `lscpu -p=CPU,CORE,SOCKET,NODE` rows rebuilt from /sys, for systems without a usable lscpu."""
    cpu_root = sys_root / "devices/system/cpu"
    rows = []
    for cpu in sorted(parse_cpu_list((cpu_root / "online").read_text())):
        topo = cpu_root / f"cpu{cpu}/topology"
        socket = (topo / "physical_package_id").read_text().strip()
        core = (topo / "core_id").read_text().strip()
        nodes = [p.name[4:] for p in (cpu_root / f"cpu{cpu}").glob("node[0-9]*")]
        # core_id repeats across sockets; lscpu numbers cores globally, grouping is by (socket, core) either way
        rows.append(f"{cpu},{core},{socket},{nodes[0] if nodes else ''}")
    return "\n".join(rows) + "\n"


def read_lscpu() -> str:
    try:
        result = subprocess.run(["lscpu", "-p=CPU,CORE,SOCKET,NODE"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return sysfs_topology_text()
    return result.stdout


def _cgroup_folders(proc_cgroup: str, v1_controller: str, cgroup_root: Path):
    """(folder, is_v1) for this process's cgroup of V1_CONTROLLER (or the v2 unified one) and each of its ancestors.
    A path missing under a namespaced mount falls back to the nearest folder that exists."""
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        v1 = controllers != ""
        if v1 and v1_controller not in controllers.split(","):
            continue
        base = cgroup_root / controllers if v1 else cgroup_root
        here = base / path.lstrip("/")
        for folder in (here, *here.parents):
            if folder.is_relative_to(base) and folder.exists():
                yield folder, v1


def _cgroup_quota_text(folder: Path, v1: bool) -> str | None:
    """One cgroup folder's CPU quota in cpu.max form, None where the folder has no quota file."""
    if not v1:
        cpu_max = folder / "cpu.max"
        return cpu_max.read_text() if cpu_max.exists() else None
    quota, period = folder / "cpu.cfs_quota_us", folder / "cpu.cfs_period_us"
    if not quota.exists():
        return None
    value = quota.read_text().strip()
    return f"{'max' if value == '-1' else value} {period.read_text().strip()}"


def read_cpu_max(proc_cgroup: str, cgroup_root: Path = Path("/sys/fs/cgroup")) -> str:
    """The tightest CPU quota on this process's cgroup path and its ancestors (cgroup v2 `cpu.max` or v1 cfs files),
    in cpu.max form."""
    texts = [_cgroup_quota_text(folder, v1) for folder, v1 in _cgroup_folders(proc_cgroup, "cpu", cgroup_root)]
    finite = [(parse_cpu_max(text), text) for text in texts if text and parse_cpu_max(text) is not None]
    return min(finite)[1] if finite else "max 100000"


V1_UNLIMITED = 2**62  # cgroup v1 writes "no limit" as a huge page-aligned number (9223372036854771712)


def read_memory_max(proc_cgroup: str, cgroup_root: Path = Path("/sys/fs/cgroup")) -> str:
    """The tightest memory limit on this process's cgroup path and its ancestors (cgroup v2 `memory.max` or v1
    `memory.limit_in_bytes`), in memory.max form."""
    limits = []
    for folder, v1 in _cgroup_folders(proc_cgroup, "memory", cgroup_root):
        file = folder / ("memory.limit_in_bytes" if v1 else "memory.max")
        value = parse_memory_max(file.read_text()) if file.exists() else None
        if value is not None and value < V1_UNLIMITED:
            limits.append(value)
    return str(min(limits)) if limits else "max"


def read_machine_texts() -> MachineTexts:
    atom, proc_cgroup = Path("/sys/devices/cpu_atom/cpus"), Path("/proc/self/cgroup").read_text()
    return MachineTexts(
        cpuinfo=Path("/proc/cpuinfo").read_text(),
        lscpu=read_lscpu(),
        affinity=frozenset(os.sched_getaffinity(0)),
        cpu_max=read_cpu_max(proc_cgroup),
        meminfo=Path("/proc/meminfo").read_text(),
        efficiency_cpus=atom.read_text() if atom.exists() else "",
        memory_max=read_memory_max(proc_cgroup),
    )


def detect() -> CpuInfo:
    return from_texts(read_machine_texts())
