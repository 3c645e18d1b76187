"""The system rung: which allocator, OpenMP runtime, thread count and CPU binding a process starts with.

`plan(cpu, options, environ, libs, pinning_tools)` is pure: the machine, the environment, the libraries found and the
pinning tools that work are all passed in, so tests feed canned machines. `look_around` looks them up here
(`find_libraries`, `probe_pinning_tools`); `apply` execs a plan (LD_PRELOAD and OpenMP settings only act at process start).
ENV_VARS documents every variable a plan can set; docs/launcher.md holds it rendered by `env_table_markdown()`.
"""

import os
import platform
import re
import shlex
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from sdcpu.errors import UsageError
from sdcpu.system.hardware import CpuInfo, format_cpu_list

JEMALLOC_CONF = "oversize_threshold:1,background_thread:true,metadata_thp:auto,dirty_decay_ms:60000,muzzy_decay_ms:60000"

# File names tried for each library, best first; LIBRARY_PREFIXES recognises any build of it in LD_PRELOAD or a map.
LIBRARY_FILES = {
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so"),
    "iomp": ("libiomp5.so",),
}
LIBRARY_PREFIXES = {"jemalloc": "libjemalloc", "tcmalloc": "libtcmalloc", "iomp": "libiomp5", "gomp": "libgomp"}
ROLES = {"jemalloc": "allocator", "tcmalloc": "allocator", "iomp": "openmp", "gomp": "openmp"}


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str
    when: str
    why: str


ENV_VARS = (
    EnvVar("LD_PRELOAD", "libjemalloc.so.2 or libtcmalloc_minimal.so.4, then libiomp5.so (full paths)",
           "allocator jemalloc/tcmalloc, openmp iomp",
           "the allocator and OpenMP runtime only replace the defaults if loaded first; appended after your own "
           "entries, skipped where yours already holds a library of the same role"),
    EnvVar("MALLOC_CONF", JEMALLOC_CONF, "allocator jemalloc (not jemalloc=default)",
           "the seed's jemalloc tuning: large blocks in their own extents, a background purge thread, freed pages kept "
           "60 s so each UNet step reuses the last step's buffers instead of faulting in fresh pages"),
    EnvVar("OMP_NUM_THREADS", "threads; default usable physical cores / instances", "always",
           "one thread per physical core of this process's share (affinity mask and cgroup quota): SMT siblings share "
           "one core's vector units, and more threads than the quota only adds throttling"),
    EnvVar("KMP_BLOCKTIME", "1", "openmp iomp",
           "idle Intel OpenMP threads sleep after 1 ms instead of spinning 200 ms, freeing the core between ops"),
    EnvVar("KMP_AFFINITY", "granularity=fine,compact,1,0", "openmp iomp, pin (not with --no-bind or openvino)",
           "binds each Intel OpenMP thread to its own core of the pinned set, one thread per physical core"),
    EnvVar("OMP_PROC_BIND", "close", "openmp gomp, pin (not with --no-bind or openvino)",
           "binds GNU OpenMP threads to neighbouring places"),
    EnvVar("OMP_PLACES", "cores", "openmp gomp, pin (not with --no-bind or openvino)",
           "one GNU OpenMP place per core of the pinned set"),
    EnvVar("SDCPU_LAUNCH_LIBRARIES", "the libraries asked for, e.g. jemalloc,iomp", "allocator or openmp iomp",
           "sdcpu.system.verify in the child reports each one that is not mapped as a failure"),
    EnvVar("SDCPU_LAUNCH_CPUS", "the instance's CPU list, e.g. 0-15", "pin",
           "sdcpu.system.verify in the child reports an affinity mask other than this as a failure"),
    EnvVar("SDCPU_INSTANCE", "0 .. instances-1", "instances > 1", "tells each copy which one it is"),
)
WHY = {var.name: var.why for var in ENV_VARS}


@dataclass(frozen=True)
class LaunchOptions:
    allocator: str = "default"  # jemalloc | tcmalloc | default
    openmp: str | None = None  # iomp | gomp | None (leave torch's runtime as it is)
    threads: int | None = None  # per instance; None = usable physical cores / instances
    pin: bool = False
    instances: int = 1
    jemalloc_conf: bool = True  # jemalloc with the seed's MALLOC_CONF; False: jemalloc's own defaults
    # With pin: bind OpenMP threads to cores. Binding pins the main thread to the first core, and every thread the
    # program starts after inherits that one core: off where another thread pool computes (OpenVINO's TBB).
    bind_threads: bool = True

    def __post_init__(self):
        if self.allocator not in ("jemalloc", "tcmalloc", "default"):
            raise UsageError(f"allocator must be jemalloc, tcmalloc or default, not {self.allocator!r}")
        if self.openmp not in ("iomp", "gomp", None):
            raise UsageError(f"openmp must be iomp, gomp or None, not {self.openmp!r}")
        if (self.threads is not None and self.threads < 1) or self.instances < 1:
            raise UsageError("threads and instances must be at least 1")


@dataclass(frozen=True)
class LaunchPlan:
    env: dict[str, str]  # the variables this plan sets, in ENV_VARS order
    argv_prefix: tuple[str, ...]  # numactl/taskset binding, or empty
    notes: tuple[str, ...]  # everything worth knowing, in plain words
    kept: dict[str, str] = field(default_factory=dict)  # the user's values the plan left in place
    missing: tuple[str, ...] = ()  # what was asked for and cannot be delivered here (jemalloc, iomp, pin)
    cpus: tuple[int, ...] = ()  # the CPUs this instance is pinned to

    def environ(self, base) -> dict[str, str]:
        return {**base, **self.env}


def python_module(module: str) -> list[str]:
    """The argv of `python -P -m MODULE`, how sdcpu starts every Python child: -P (safe path) keeps the current
    folder off sys.path, so a json.py in the folder sdcpu runs from is never imported in place of the real one."""
    return [sys.executable, "-P", "-m", module]


def library_kind(path: str) -> str | None:
    """'.../libjemalloc.so.2' -> 'jemalloc'; None for other libraries."""
    name = os.path.basename(path)
    return next((kind for kind, prefix in LIBRARY_PREFIXES.items() if re.match(rf"{prefix}[._-]", name)), None)


def _preload(asked: list[str], libs, environ, notes: list[str], missing: list[str]) -> str | None:
    """The LD_PRELOAD value: the user's entries first, then each asked library not already covered by theirs."""
    theirs = [entry for entry in environ.get("LD_PRELOAD", "").replace(" ", ":").split(":") if entry]
    ours = []
    for kind in asked:
        clash = [entry for entry in theirs if ROLES.get(library_kind(entry) or "") == ROLES[kind]]
        if clash:
            notes.append(f"{kind}: your LD_PRELOAD already holds {clash[0]}; kept it, nothing added")
            if library_kind(clash[0]) != kind:
                missing.append(kind)
        elif libs.get(kind):
            ours.append(libs[kind])
        else:
            notes.append(f"{kind}: none of {', '.join(LIBRARY_FILES[kind])} found; running without it")
            missing.append(kind)
    if theirs and ours:
        notes.append(f"LD_PRELOAD: your entries kept first, {', '.join(ours)} appended")
    return ":".join(theirs + ours) if ours else None


def _instance(cpu: CpuInfo, options: LaunchOptions, environ, libs, pinning_tools, threads: int,
              cpus: tuple[int, ...], index: int, shared_notes: list[str]) -> LaunchPlan:
    notes = list(shared_notes)
    missing: list[str] = []
    asked = [kind for kind in (options.allocator, options.openmp) if kind in LIBRARY_FILES]
    bind = options.pin and options.bind_threads
    wanted = {
        "LD_PRELOAD": _preload(asked, libs, environ, notes, missing),
        "MALLOC_CONF": JEMALLOC_CONF if options.allocator == "jemalloc" and options.jemalloc_conf
        and "jemalloc" not in missing else None,
        "OMP_NUM_THREADS": str(threads),
        "KMP_BLOCKTIME": "1" if options.openmp == "iomp" else None,
        "KMP_AFFINITY": "granularity=fine,compact,1,0" if options.openmp == "iomp" and bind else None,
        "OMP_PROC_BIND": "close" if options.openmp == "gomp" and bind else None,
        "OMP_PLACES": "cores" if options.openmp == "gomp" and bind else None,
        "SDCPU_LAUNCH_LIBRARIES": ",".join(asked) or None,
        "SDCPU_LAUNCH_CPUS": format_cpu_list(cpus) if options.pin else None,
        "SDCPU_INSTANCE": str(index) if options.instances > 1 else None,
    }
    env, kept = {}, {}
    for name, value in wanted.items():
        if value is None:
            continue
        if name in environ and name != "LD_PRELOAD":
            kept[name] = environ[name]
            if environ[name] != value:
                notes.append(f"{name}={environ[name]} kept from your environment (the plan would set {value})")
        else:
            env[name] = value
    prefix: tuple[str, ...] = ()
    if options.pin:
        cpu_list = format_cpu_list(cpus)
        if "numactl" in pinning_tools:
            nodes = sorted({core.node for core in cpu.cores if set(core.cpus) & set(cpus)})
            prefix = ("numactl", "-C", cpu_list, "-m", ",".join(map(str, nodes)))
        elif "taskset" in pinning_tools:
            prefix = ("taskset", "-c", cpu_list)
            notes.append("pin: numactl does not work here; taskset binds the CPUs but not the memory node")
        else:
            notes.append("pin: neither numactl nor taskset works here; not pinned")
            missing.append("pin")
    return LaunchPlan(env, prefix, tuple(notes), kept, tuple(missing), cpus)


def plan(cpu: CpuInfo, options: LaunchOptions, environ, libs, pinning_tools=frozenset()) -> tuple[LaunchPlan, ...]:
    """One LaunchPlan per instance. `libs` maps jemalloc/tcmalloc/iomp to a path (absent or None: not found);
    `pinning_tools` holds the binding tools that work here ("numactl", "taskset")."""
    cores = cpu.usable_physical_cores
    if options.pin and options.instances > len(cores):
        raise UsageError(f"{options.instances} pinned instances need {options.instances} usable physical cores; "
                         f"this process may use {len(cores)}")
    if options.threads is not None and options.threads > len(cpu.usable_cpus):
        raise UsageError(f"threads={options.threads}: more than the {len(cpu.usable_cpus)} CPUs this process may use "
                         f"(threads beyond them only wait for each other)")
    share = max(1, len(cores) // options.instances)
    threads = options.threads or share
    notes = [_share_note(cpu, cores)]
    if threads * options.instances > len(cores):
        notes.append(f"{options.instances} x {threads} threads oversubscribe {len(cores)} usable physical cores")
    if cpu.hybrid:
        performance = sum(not core.efficiency for core in cpu.cores)
        notes.append(f"hybrid CPU: E cores are used after the {performance} P cores; OpenMP splits work evenly, so "
                     f"P cores wait for E cores; compare with --threads {performance}")
    width = min(threads, share)  # pinned CPUs per instance: its threads, within its share of the cores
    return tuple(
        _instance(cpu, options, environ, libs, pinning_tools, threads,
                  cores[index * share:index * share + width] if options.pin else (), index, notes)
        for index in range(options.instances)
    )


def _share_note(cpu: CpuInfo, cores: tuple[int, ...]) -> str:
    limits = []
    if len(cpu.usable_cpus) < cpu.logical_cpus:
        limits.append(f"affinity mask {format_cpu_list(cpu.usable_cpus)}")
    if cpu.cpu_quota is not None:
        limits.append(f"cgroup quota {cpu.cpu_quota:g} CPUs")
    if cpu.threads_per_core > 1:
        limits.append("one logical CPU per core, SMT siblings left idle")
    detail = f" ({'; '.join(limits)})" if limits else ""
    return f"{len(cores)} usable physical cores of {cpu.physical_cores}{detail}: {format_cpu_list(cores)}"


def auto_options(cpu: CpuInfo, libs, pinning_tools) -> tuple[LaunchOptions, tuple[str, ...]]:
    """The system options `auto` picks on this machine, with one reason per choice."""
    if libs.get("jemalloc"):
        allocator = "jemalloc"
        why_alloc = f"allocator jemalloc ({libs['jemalloc']}): the seed's choice, a slight edge over tcmalloc"
    elif libs.get("tcmalloc"):
        allocator, why_alloc = "tcmalloc", f"allocator tcmalloc ({libs['tcmalloc']}): jemalloc not found"
    else:
        allocator = "default"
        why_alloc = "allocator default: neither jemalloc nor tcmalloc found (apt install libjemalloc2)"
    if cpu.arch == "x86_64" and libs.get("iomp"):
        openmp, why_omp = "iomp", f"openmp iomp ({libs['iomp']}): Intel OpenMP with short spin and core binding"
    elif cpu.arch == "x86_64":
        openmp, why_omp = None, "openmp unchanged: libiomp5.so not found (pip install intel-openmp)"
    else:
        openmp, why_omp = None, f"openmp unchanged: Intel OpenMP is x86-only, torch's GNU OpenMP stays on {cpu.arch}"
    quota_only = cpu.cpu_quota is not None and len(cpu.usable_cpus) == cpu.logical_cpus
    if quota_only:
        pin, why_pin = False, "no pinning: only a cgroup quota limits this process, pinned CPUs could be shared"
    elif pinning_tools:
        tool = "numactl" if "numactl" in pinning_tools else "taskset"
        pin, why_pin = True, f"pin with {tool}: each thread stays on its own physical core"
    else:
        pin, why_pin = False, "no pinning: neither numactl nor taskset works here"
    why_threads = f"threads {len(cpu.usable_physical_cores)}: the usable physical cores; one instance, lowest latency"
    return LaunchOptions(allocator, openmp, None, pin, 1), (why_alloc, why_omp, why_threads, why_pin)


def shell_line(plan: LaunchPlan, argv=("COMMAND",)) -> str:
    assignments = [f"{name}={shlex.quote(value)}" for name, value in plan.env.items()]
    return " ".join([*assignments, *map(shlex.quote, plan.argv_prefix), *map(shlex.quote, argv)])


def format_plan(plan: LaunchPlan, argv=("COMMAND",)) -> str:
    """A copy-pasteable shell line, then a table of every variable set or kept and why, then the notes."""
    rows = [f"| {name} | `{value}` | {WHY[name]} |" for name, value in plan.env.items()]
    rows += [f"| {name} | `{value}` (yours, kept) | {WHY[name]} |" for name, value in plan.kept.items()]
    lines = [shell_line(plan, argv), "", "| variable | value | why |", "|---|---|---|", *rows]
    return "\n".join(lines + ([""] + [f"- {note}" for note in plan.notes] if plan.notes else []))


def env_table_markdown() -> str:
    """ENV_VARS as the markdown table docs/launcher.md (and the README) carry."""
    rows = [f"| `{v.name}` | `{v.value}` | {v.when} | {v.why} |" for v in ENV_VARS]
    return "\n".join(["| variable | value | set when | why |", "|---|---|---|---|", *rows])


def library_dirs(environ) -> tuple[Path, ...]:
    """Where the libraries really live: the venv and conda prefixes, /usr/local, then Debian multiarch and the rest."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
    prefixes = [environ.get("VIRTUAL_ENV"), sys.prefix, environ.get("CONDA_PREFIX"), "/usr/local"]
    dirs = [Path(p) / "lib" for p in prefixes if p]
    dirs += [Path("/usr/lib") / multiarch, Path("/lib") / multiarch, Path("/usr/lib64"), Path("/usr/lib"),
             Path.home() / ".local/lib"]
    return tuple(dict.fromkeys(dirs))


def find_libraries(dirs) -> dict[str, str]:
    """{kind: path} for each of jemalloc, tcmalloc, iomp found in `dirs` (file names in LIBRARY_FILES order)."""
    found = {}
    for kind, names in LIBRARY_FILES.items():
        hits = [d / name for name in names for d in dirs if (d / name).is_file()]
        if hits:
            found[kind] = str(hits[0])
    return found


def probe_pinning_tools(cpu: CpuInfo) -> frozenset[str]:
    """The binding tools that work here, checked by running them on the first usable CPU (containers often ship
    numactl without the permission to use it)."""
    first = cpu.usable_cpus[0]
    node = next(core.node for core in cpu.cores if first in core.cpus)
    commands = {"numactl": ["numactl", "-C", str(first), "-m", str(node), "true"],
                "taskset": ["taskset", "-c", str(first), "true"]}
    working = set()
    for tool, command in commands.items():
        try:
            if subprocess.run(command, capture_output=True, timeout=10).returncode == 0:
                working.add(tool)
        except (OSError, subprocess.TimeoutExpired):
            pass
    return frozenset(working)


def look_around(cpu: CpuInfo, environ, pinning: bool = True) -> tuple[dict[str, str], frozenset[str]]:
    """(the libraries found, the pinning tools that work): the launcher's two looks at the live system, taken
    together by every caller. PINNING False skips running numactl and taskset where no pinning is asked for."""
    return find_libraries(library_dirs(environ)), probe_pinning_tools(cpu) if pinning else frozenset()


def apply(plan: LaunchPlan, argv, environ=os.environ):
    """Replace this process with `argv` under the plan; never returns."""
    command = [*plan.argv_prefix, *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(command[0], command, plan.environ(environ))
