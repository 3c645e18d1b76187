"""Recipes: an ordered list of named steps, parsed from `jemalloc,iomp,pin,channels_last,compile,scheduler=dpm++`.

System steps become the launch plan (applied by re-exec, since they only act at process start); framework and
algorithm steps are functions applied by `sdcpu.optimize`. A trailing `!` forces a step the hardware check would skip
(`bf16!`). Named recipes are the seed's ladder rungs, cumulative, plus `auto`, resolved for the machine at hand.
"""

import json
from dataclasses import dataclass

from sdcpu.errors import UsageError


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError("a whole number >= 1")
    return int(text)


def _guidance(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("a number >= 0")
    return value


def _scheduler(text: str) -> str:
    from sdcpu.schedulers import lookup

    return lookup(text) and text


TOME_MAX_RATIO = 0.75  # token merging pairs 3 source tokens of each 2x2 cell with its destination: at most 3/4 merge


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 < value <= TOME_MAX_RATIO:
        raise ValueError(f"a fraction in (0, {TOME_MAX_RATIO}]")
    return value


def _jemalloc_conf(text: str) -> str:
    if text != "default":
        raise ValueError("`default` (jemalloc's own configuration) or no value (the seed's MALLOC_CONF)")
    return text


def _precision(text: str) -> str:
    if text not in ("f32", "bf16"):
        raise ValueError("f32 or bf16")
    return text


@dataclass(frozen=True)
class StepKind:
    group: str  # system | framework | algorithm
    value: object = None  # parser of the step's value; None: the step takes no value
    summary: str = ""
    optional: bool = False  # the value may be left out (`openvino` or `openvino=f32`)


STEP_KINDS = {
    "jemalloc": StepKind("system", _jemalloc_conf, "jemalloc allocator with the seed's MALLOC_CONF (LD_PRELOAD); "
                         "=default keeps jemalloc's own configuration", optional=True),
    "tcmalloc": StepKind("system", summary="tcmalloc allocator (LD_PRELOAD)"),
    "iomp": StepKind("system", summary="Intel OpenMP runtime libiomp5 (LD_PRELOAD) with KMP_* settings"),
    "threads": StepKind("system", _count, "OMP_NUM_THREADS per instance (default: usable physical cores)"),
    "pin": StepKind("system", summary="bind to the usable physical cores and their NUMA memory (numactl, else taskset)"),
    "instances": StepKind("system", _count, "N pinned copies splitting the cores (throughput mode)"),
    "channels_last": StepKind("framework", summary="NHWC memory format for the UNet and VAE convolutions"),
    "bf16": StepKind("framework", summary="bfloat16 weights and activations; only on CPUs with native bf16"),
    "compile": StepKind("framework", summary="torch.compile (inductor, freezing) of the UNet and VAE decoder"),
    "openvino": StepKind("framework", _precision, "UNet, VAE decoder and text encoder run by OpenVINO, static shapes; "
                         "=f32|bf16 sets the precision (default: bf16 where the CPU has it natively, else f32)",
                         optional=True),
    "int8": StepKind("framework", summary="the OpenVINO UNet quantized to int8 by NNCF's hybrid scheme (after openvino)"),
    "ipex": StepKind("framework", summary="Intel Extension for PyTorch (end-of-life), only when installed and matching"),
    "scheduler": StepKind("algorithm", _scheduler, "swap the scheduler (e.g. dpm++)"),
    "lcm-lora": StepKind("algorithm", str, "LCM-LoRA fused into the UNet, LCM scheduler, 4 steps at guidance 1; "
                         "=HUB_ID|DIR|FILE picks the LoRA (default latent-consistency/lcm-lora-sdv1-5; random for "
                         "random: models)", optional=True),
    "deepcache": StepKind("algorithm", _count, "DeepCache: the full UNet every N calls, its shallow branch between"),
    "tome": StepKind("algorithm", _ratio, "token merging: =R (default 0.5) of the tokens merged before each "
                     "self-attention at the finest attention level", optional=True),
    "tiny-vae": StepKind("algorithm", str, "TAESD (AutoencoderTiny) as the VAE decoder; =HUB_ID|FOLDER picks "
                         "the weights (default madebyollin/taesd; random for random: models)", optional=True),
    "steps": StepKind("algorithm", _count, "default number of denoising steps"),
    "guidance": StepKind("algorithm", _guidance, "default classifier-free guidance scale"),
}


@dataclass(frozen=True)
class Step:
    name: str
    value: object = None
    forced: bool = False

    @property
    def group(self) -> str:
        return STEP_KINDS[self.name].group

    def __str__(self):
        return self.name + ("!" if self.forced else "") + ("" if self.value is None else f"={self.value}")

    @classmethod
    def parse(cls, text: str) -> "Step":
        head, _, raw = text.strip().partition("=")
        name, forced = head.removesuffix("!"), head.endswith("!")
        kind = STEP_KINDS.get(name)
        if kind is None:
            raise UsageError(f"unknown recipe step {name!r}; steps: {', '.join(STEP_KINDS)}")
        if kind.value is None and raw:
            raise UsageError(f"recipe step {name!r} takes no value")
        if kind.value is not None and not raw and not kind.optional:
            raise UsageError(f"recipe step {name!r} needs a value: {name}=...")
        try:
            value = kind.value(raw) if raw else None
        except ValueError as err:
            raise UsageError(f"recipe step {name}={raw}: expected {err}") from None
        return cls(name, value, forced)


@dataclass(frozen=True)
class Recipe:
    name: str  # a named recipe, or "custom"
    steps: tuple[Step, ...] = ()

    def __str__(self):
        return ",".join(map(str, self.steps)) or "baseline"

    def group(self, group: str) -> tuple[Step, ...]:
        return tuple(step for step in self.steps if step.group == group)

    def get(self, name: str) -> Step | None:
        return next((step for step in self.steps if step.name == name), None)

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "steps": [str(step) for step in self.steps]})

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        data = json.loads(text)
        return cls(data["name"], tuple(Step.parse(step) for step in data["steps"]))


# The seed's ladder, cumulative: each rung adds one level to the previous one.
NAMED = {
    "baseline": "",
    "system": "jemalloc,iomp,pin",
    "framework": "jemalloc,iomp,pin,channels_last,bf16,compile",
    "seed": "jemalloc,iomp,pin,channels_last,bf16,compile,scheduler=dpm++",
}


def is_auto(text: str) -> bool:
    """`auto` or `auto:QUALITY`."""
    return text.strip() == "auto" or text.strip().startswith("auto:")


def parse(text: str) -> Recipe:
    """A named recipe, or comma-separated steps. `auto` is resolved by `sdcpu.auto`, not here."""
    text = text.strip()
    if text in NAMED:
        return Recipe(text, tuple(Step.parse(s) for s in NAMED[text].split(",") if s))
    if is_auto(text):
        raise UsageError("recipe 'auto' depends on the machine: resolve it with sdcpu.auto.recipe()")
    steps = tuple(Step.parse(part) for part in text.split(",") if part.strip())
    names = [step.name for step in steps]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UsageError(f"recipe names {', '.join(duplicates)} more than once")
    if {"jemalloc", "tcmalloc"} <= set(names):
        raise UsageError("recipe asks for two allocators: jemalloc and tcmalloc")
    return Recipe("custom", steps)


def launch_options(recipe: Recipe):
    """The recipe's system steps as the launcher's options."""
    from sdcpu.launcher import LaunchOptions

    allocator = next((s.name for s in recipe.group("system") if s.name in ("jemalloc", "tcmalloc")), "default")
    threads, instances = recipe.get("threads"), recipe.get("instances")
    return LaunchOptions(
        allocator=allocator,
        openmp="iomp" if recipe.get("iomp") else None,
        threads=threads.value if threads else None,
        pin=recipe.get("pin") is not None,
        instances=instances.value if instances else 1,
        jemalloc_conf=not (recipe.get("jemalloc") and recipe.get("jemalloc").value == "default"),
        bind_threads=recipe.get("openvino") is None,  # OpenVINO computes on its own threads: see LaunchOptions
    )
