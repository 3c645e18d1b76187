"""What `sdcpu tune` may try on this machine: dimensions of options, and how a configuration becomes a recipe.

A configuration holds one option per dimension; each dimension's first option is the simplest (what a process gets
with no recipe), so the search starts from the baseline and a simpler option is the one kept on a tie. Options appear
only where this machine can run them: a library that is not found, bf16 without native hardware (or at quality exact),
a backend that is not installed are left out. Combinations that cannot work are refused by `conflict` with the reason.
"""

from dataclasses import dataclass

from sdcpu import recipes
from sdcpu.system.launcher import LaunchOptions

Config = tuple[str, ...]  # one option per dimension, in Space.dimensions order


@dataclass(frozen=True)
class Dimension:
    name: str
    options: tuple[str, ...]  # options[0] is the default: no recipe step


@dataclass(frozen=True)
class Space:
    dimensions: tuple[Dimension, ...]

    @property
    def default(self) -> Config:
        return tuple(d.options[0] for d in self.dimensions)

    def index(self, name: str) -> int:
        return next(i for i, d in enumerate(self.dimensions) if d.name == name)

    def with_option(self, config: Config, name: str, option: str) -> Config:
        i = self.index(name)
        return config[:i] + (option,) + config[i + 1:]

    def describe(self, config: Config) -> dict[str, str]:
        return {d.name: option for d, option in zip(self.dimensions, config)}

    def _launch_options(self, config: Config) -> LaunchOptions:
        """The configuration's system dimensions, named as the launcher's options, as those options (the first thread
        count, the launcher's own default, as None)."""
        c = self.describe(config)
        allocator, _, conf = c.get("allocator", "default").partition("=")
        threads = None if c.get("threads") == self.describe(self.default).get("threads") else int(c["threads"])
        return LaunchOptions(allocator=allocator, openmp=c.get("openmp"), threads=threads, pin=c.get("pin") == "on",
                             jemalloc_conf=conf != "default")

    def recipe(self, config: Config) -> str:
        """The configuration as recipe steps (system first, then framework), `baseline` for the default."""
        c = self.describe(config)
        steps = [str(step) for step in recipes.system_steps(self._launch_options(config))]
        steps += ["channels_last"] if c.get("layout") == "channels_last" else []
        bf16, backend = c.get("precision") == "bf16", c.get("backend", "eager")
        if backend != "eager" and recipes.kind(backend).own_precision:
            steps.append(f"{backend}={'bf16' if bf16 else 'f32'}")
        else:
            steps += ["bf16"] if bf16 else []
            steps += [backend] if backend != "eager" else []
        return ",".join(steps) or "baseline"

    def conflict(self, config: Config) -> str | None:
        """Why CONFIG cannot run (the recipe parser's conflict rules), or None."""
        return recipes.conflict(step.split("=")[0] for step in self.recipe(config).split(","))


def thread_counts(physical: int, logical: int) -> tuple[int, ...]:
    """Physical cores first (the default), all logical CPUs where SMT adds some, and on big machines (16+ cores)
    half and three quarters of the cores: a UNet step can be bound by memory bandwidth there, not by compute."""
    counts = [physical] + ([logical] if logical > physical else [])
    if physical >= 16:
        counts += [physical * 3 // 4, physical // 2]
    return tuple(counts)


def build(cpu, libs: dict, pinning_tools, installed: set[str], quality: str) -> Space:
    """The dimensions this machine offers. `installed` names the backends whose package (their kind's `needs`) imports
    here; quality `exact` keeps everything fp32."""
    allocators = ["default"] + [a for a in ("tcmalloc",) if libs.get(a)]
    allocators += ["jemalloc", "jemalloc=default"] if libs.get("jemalloc") else []
    dimensions = [
        Dimension("precision", ("fp32", "bf16") if cpu.native_bf16 and quality != "exact" else ("fp32",)),
        Dimension("backend", ("eager", *(b for b in recipes.with_role("backend")
                                         if recipes.STEP_KINDS[b].needs is None or b in installed))),
        Dimension("threads", tuple(map(str, thread_counts(len(cpu.usable_physical_cores), len(cpu.usable_cpus))))),
        Dimension("allocator", tuple(allocators)),
        Dimension("openmp", ("gomp", "iomp") if libs.get("iomp") and cpu.arch == "x86_64" else ("gomp",)),
        Dimension("pin", ("off", "on") if pinning_tools else ("off",)),
        Dimension("layout", ("contiguous", "channels_last")),
    ]
    return Space(tuple(dimensions))
