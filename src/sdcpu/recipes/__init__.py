"""Recipes: an ordered list of named steps, parsed from `jemalloc,iomp,pin,channels_last,compile,scheduler=dpm++`.

System steps become the launch plan (applied by re-exec, since they only act at process start); framework and
algorithm steps are functions applied by `sdcpu.optimize`. A trailing `!` forces a step the hardware check would skip
(`bf16!`). Named recipes are the seed's ladder rungs, cumulative, plus `auto`, resolved for the machine at hand.
"""

import json
from dataclasses import dataclass

from sdcpu.errors import UsageError
from sdcpu.recipes import values


@dataclass(frozen=True)
class Launch:
    """What a system step sets in the launcher's options (sdcpu.system.launcher.LaunchOptions): FIELD, to VALUE, or to the
    step's own value where VALUE is None (`threads=8`)."""

    field: str
    value: object = None


@dataclass(frozen=True)
class StepKind:
    """Everything sdcpu knows of a step, declared once: the registry, the parser, auto, the ladders, tune's search,
    the launcher's options and the reports read it from here."""

    group: str  # system | framework | algorithm
    value: object = None  # parser of the step's value; None: the step takes no value
    summary: str = ""
    optional: bool = False  # the value may be left out (`openvino` or `openvino=f32`)
    module: str | None = None  # the module whose apply(pipe, step, cpu) runs it; None: a function in sdcpu.pipeline.optimizer
    # Where it goes relative to the runtime that runs the UNet: "backend" replaces that runtime (one at a time),
    # "before_backend" changes the UNet's weights (before a backend converts them), "after_backend" acts on what a
    # backend built, "eager" patches the eager UNet's forward (no backend may follow).
    role: str = ""
    compiles: bool = False  # its first call compiles: callers warm it up and report that time apart
    # its one-time cost (minutes of compiling) is paid again in every process: auto takes it only where one process
    # makes many images (`sdcpu serve`)
    per_process: bool = False
    # The step as the full bench ladder tries it (`deepcache=2`); None: the ladder leaves it out.
    ladder: str | None = None
    # It cuts work at a small cost in fidelity: auto's `fast` level adds it on top of a tuned profile, and the full
    # ladder tries it after the steps that keep the image.
    cuts_work: bool = False
    needs: str | None = None  # the Python package it needs beyond torch: tune offers a backend only where it imports
    own_threads: bool = False  # it computes on a thread pool of its own: the launcher leaves OpenMP threads unbound
    # a ControlNet can steer the UNet it leaves (sdcpu.pipeline.control): the eager module, whose forward takes the
    # ControlNet's residuals, or OpenVINO's (a second IR taking them: sdcpu.backends.openvino_control); inductor's
    # graph, quantized UNets and IPEX's take no such inputs, DeepCache's forward skips them
    control: bool = True
    partial_calls: bool = False  # some denoiser calls run part of the network: a FLOP rate per call means nothing
    # it patches the eager denoiser's forward or its blocks' (role "eager"): a backend after it would convert the
    # patched network or the plain one, under the plain one's IR cache, so the optimizer skips a backend that follows
    patches: bool = False
    # what it skips is decided from a call's whole batch: images made in one call depend on each other, so serve and
    # batch make no call of several requests' images under it
    batch_decides: bool = False
    launch: Launch | None = None  # a system step's option for the launcher

    @property
    def own_precision(self) -> bool:
        """It takes its precision as its value (`openvino=bf16`): torch's bf16 step has no place beside it."""
        return self.value is values.precision


STEP_KINDS = {
    "jemalloc": StepKind("system", values.jemalloc_conf, "jemalloc allocator with the seed's MALLOC_CONF (LD_PRELOAD); "
                         "=default keeps jemalloc's own configuration", optional=True,
                         launch=Launch("allocator", "jemalloc")),
    "tcmalloc": StepKind("system", summary="tcmalloc allocator (LD_PRELOAD)", launch=Launch("allocator", "tcmalloc")),
    "iomp": StepKind("system", summary="Intel OpenMP runtime libiomp5 (LD_PRELOAD) with KMP_* settings",
                     launch=Launch("openmp", "iomp")),
    "threads": StepKind("system", values.count, "OMP_NUM_THREADS per instance (default: usable physical cores)",
                        launch=Launch("threads")),
    "pin": StepKind("system", summary="bind to the usable physical cores and their NUMA memory (numactl, else taskset)",
                    launch=Launch("pin", True)),
    "instances": StepKind("system", values.count, "N pinned copies splitting the cores (throughput mode)",
                          launch=Launch("instances")),
    "channels_last": StepKind("framework", summary="NHWC memory format for the UNet and VAE convolutions",
                              ladder="channels_last"),
    "bf16": StepKind("framework", summary="bfloat16 weights and activations; only on CPUs with native bf16",
                     ladder="bf16"),
    "weights": StepKind("framework", values.stored, "text encoder and denoiser weights stored small, each layer "
                        "computed in float32 (eager torch): =bf16 (a bf16 model's own, FLUX.2's: float32's speed at "
                        "half its memory where bf16 is emulated), =int8 (a scale per row), =int4 (groups of 128); "
                        "after openvino, =int8|int4 compress the IR's weights (NNCF)",
                        module="sdcpu.backends.stored", role="eager"),
    "compile": StepKind("framework", summary="torch.compile (inductor, freezing) of the UNet and VAE decoder",
                         module="sdcpu.backends.inductor", role="backend", compiles=True, ladder="compile",
                         control=False, per_process=True),
    "openvino": StepKind("framework", values.precision, "UNet, VAE decoder and text encoder run by OpenVINO, static "
                         "shapes; =f32|bf16 sets the precision (default: bf16 where the CPU has it natively, else f32)",
                         optional=True, module="sdcpu.backends.openvino", role="backend", compiles=True,
                         ladder="openvino", needs="openvino", own_threads=True),
    "int8": StepKind("framework", summary="the UNet a backend runs, quantized to int8 (NNCF after openvino, torchao "
                     "PT2E after compile)", module="sdcpu.backends.int8", role="after_backend", ladder="int8",
                     cuts_work=True, control=False),
    "release": StepKind("framework", summary="one part of a call (text encoders, denoiser, VAE) resident at a time: "
                        "each dropped when another starts; after openvino, compiled again on the next image (a "
                        "compile per part per image); on eager torch, weights read in place from their mapped files "
                        "and paged in again (a bf16 model's); peak memory of the largest part",
                        module="sdcpu.backends.release", role="after_backend"),
    "ipex": StepKind("framework", summary="Intel Extension for PyTorch (end-of-life), only when installed and matching",
                     module="sdcpu.backends.ipex", role="backend", ladder="ipex", needs="intel_extension_for_pytorch",
                     control=False),
    "scheduler": StepKind("algorithm", values.scheduler, "swap the scheduler (e.g. dpm++)", ladder="scheduler=dpm++"),
    "lcm-lora": StepKind("algorithm", str, "LCM-LoRA fused into the UNet, LCM scheduler, 4 steps at guidance 1; "
                         "=HUB_ID|DIR|FILE picks the LoRA (default latent-consistency/lcm-lora-sdv1-5; random for "
                         "random: models)", optional=True, module="sdcpu.algorithms.lcm_lora", role="before_backend",
                         ladder="lcm-lora"),
    "deepcache": StepKind("algorithm", values.count, "DeepCache: the full UNet every N calls, its shallow branch "
                          "between",
                          module="sdcpu.algorithms.deepcache", role="eager", ladder="deepcache=2", cuts_work=True,
                          control=False, partial_calls=True, patches=True),
    "fbcache": StepKind("algorithm", values.threshold, "First Block Cache on a diffusion transformer (FLUX.2): a call "
                        "whose first block's residual changed by less than =T (relative; default 0.08) since the last "
                        "full call skips the other blocks, adding their last residual again", optional=True,
                        module="sdcpu.algorithms.fbcache", role="eager", cuts_work=True,
                        control=False, partial_calls=True, batch_decides=True, patches=True),
    "tome": StepKind("algorithm", values.ratio, "token merging: =R (default 0.5) of the tokens merged before each "
                     "self-attention at the finest attention level", optional=True, module="sdcpu.algorithms.tome",
                     role="eager", ladder="tome", patches=True),
    "tiny-vae": StepKind("algorithm", str, "TAESD (AutoencoderTiny) as the VAE decoder; =HUB_ID|FOLDER picks "
                         "the weights (default madebyollin/taesd; random for random: models)", optional=True,
                         module="sdcpu.algorithms.tiny_vae", ladder="tiny-vae", cuts_work=True),
    "steps": StepKind("algorithm", values.count, "default number of denoising steps"),
    "guidance": StepKind("algorithm", values.guidance, "default classifier-free guidance scale"),
}


def kind(step: str) -> StepKind:
    """The kind of STEP as written in a recipe (`deepcache=2` -> deepcache's)."""
    return STEP_KINDS[step.split("=")[0].removesuffix("!")]


def with_role(role: str) -> tuple[str, ...]:
    """The names of the steps of ROLE, in STEP_KINDS order."""
    return tuple(name for name, k in STEP_KINDS.items() if k.role == role)


@dataclass(frozen=True)
class Conflict:
    """Steps that cannot share a recipe: STEP with any of OTHERS, for REASON."""

    step: str
    others: tuple[str, ...]
    reason: str


# Every rule of which steps cannot go together, stated once: the parser refuses such a recipe, and auto, the bench
# ladders and tune's search space drop or skip what conflicts through `conflict`.
PRELOADED_ALLOCATOR = ("OpenVINO 2026.4's CPU plugin aborts the process beside a preloaded allocator (free(): "
                       "invalid size)")
CONFLICTS = (
    Conflict("openvino", ("jemalloc", "tcmalloc"), PRELOADED_ALLOCATOR),
    Conflict("jemalloc", ("tcmalloc",), "one process has one allocator"),
)


def unbatchable(recipe: "Recipe", max_batch: int) -> None:
    """Refuse --max-batch MAX_BATCH > 1 with a step of RECIPE that decides from a call's whole batch (UsageError)."""
    steps = [str(step) for step in recipe.steps if kind(step.name).batch_decides]
    if max_batch > 1 and steps:
        raise UsageError(f"--max-batch {max_batch} with {steps[0]}: it decides what to skip from a call's whole "
                         "batch, so one request's image would depend on another's; use --max-batch 1")


def conflict(names) -> str | None:
    """Why steps NAMES cannot share a recipe ('jemalloc and openvino: ...'), or None."""
    names = set(names)
    for rule in CONFLICTS:
        clash = [other for other in rule.others if other in names]
        if rule.step in names and clash:
            return f"{clash[0]} and {rule.step}: {rule.reason}"
    return None


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


def bf16_runs(item: Step, cpu) -> bool:
    """Whether the bf16 step ITEM applies on CPU: native bf16, or forced (`bf16!`). Read by the step itself, by the
    load dtype and by auto's memory estimate."""
    return cpu.native_bf16 or item.forced


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
    """A named recipe, or comma-separated steps. `auto` is resolved by `sdcpu.recipes.auto`, not here."""
    text = text.strip()
    if text in NAMED:
        return Recipe(text, tuple(Step.parse(s) for s in NAMED[text].split(",") if s))
    if is_auto(text):
        raise UsageError("recipe 'auto' depends on the machine: resolve it with sdcpu.recipes.auto.recipe()")
    steps = tuple(Step.parse(part) for part in text.split(",") if part.strip())
    names = [step.name for step in steps]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UsageError(f"recipe names {', '.join(duplicates)} more than once")
    if reason := conflict(names):
        raise UsageError(f"recipe cannot combine {reason}")
    return Recipe("custom", steps)


def launch_options(recipe: Recipe):
    """The recipe's system steps as the launcher's options: each sets its kind's `launch`."""
    from sdcpu.system.launcher import LaunchOptions

    chosen = {}
    for step in recipe.group("system"):
        launch = STEP_KINDS[step.name].launch
        chosen[launch.field] = step.value if launch.value is None else launch.value
    jemalloc = recipe.get("jemalloc")
    return LaunchOptions(**chosen, jemalloc_conf=not (jemalloc and jemalloc.value == "default"),
                         bind_threads=not any(STEP_KINDS[step.name].own_threads for step in recipe.steps))


def system_steps(options) -> tuple[Step, ...]:
    """The system steps that give the launcher's OPTIONS (launch_options' inverse), in STEP_KINDS order: each step
    whose `launch` value the options hold, and each that carries an option's value where it is not the default."""
    from sdcpu.system.launcher import LaunchOptions

    steps = []
    for name, launch in ((name, k.launch) for name, k in STEP_KINDS.items() if k.launch):
        held = getattr(options, launch.field)
        if launch.value is None and held != getattr(LaunchOptions(), launch.field):
            steps.append(Step(name, held))
        elif launch.value is not None and held == launch.value:
            steps.append(Step(name, "default" if name == "jemalloc" and not options.jemalloc_conf else None))
    return tuple(steps)
