"""The bench protocol and its ladders: which rungs run, in which order, with which recipe.

A ladder is a generator of rungs; the runner sends each rung's row back, so a ladder can choose its next rung from
what was measured (`full` keeps a step only when it made the image faster).
"""

from dataclasses import dataclass, fields

from sdcpu import recipes
from sdcpu.bench import peers
from sdcpu.errors import UsageError
from sdcpu.pipeline import tasks
from sdcpu.pipeline.generate import Request
from sdcpu.recipes import auto

SEED_PROMPT = "sailing ship in storm by Rembrandt"


@dataclass(frozen=True)
class Protocol(Request):
    """The request every rung makes, repeated: the seed's by default, one warm-up call at 10 steps, then 10 timed calls
    at 20 steps, 512x512, one image per call; text-to-image, or img2img or inpainting (TASK) of the bench's own input
    image at STRENGTH (default: generate's, 0.75 for img2img, 1 for inpainting). Its flat `to_dict` is the `protocol`
    of results.jsonl and what a child, sdcpu's or a peer's in its own environment, reads."""

    prompt: str = SEED_PROMPT
    model: str = "random:sd15"
    runs: int = 10
    warmup_steps: int = 10
    preset: str = "seed"
    task: str = "txt2img"
    strength: float | None = None  # img2img and inpainting only

    def validate(self) -> "Protocol":
        super().validate()
        if self.num_images != 1:
            raise UsageError(f"a bench call makes one image, got {self.num_images}")
        for name in ("runs", "warmup_steps"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.task not in tasks.TASKS:
            raise UsageError(f"task {self.task!r}: choose from {', '.join(tasks.TASKS)}")
        if self.task == "txt2img" and self.strength is not None:
            raise UsageError("--strength needs --task img2img or inpaint")
        if self.task != "txt2img":
            tasks.check_strength(self.strength_used)
            tasks.check_steps(self.steps, self.strength_used)
        return self

    @property
    def strength_used(self) -> float | None:
        """The strength the calls run at: the one asked, else generate's default for the task; None for txt2img."""
        if self.task == "txt2img":
            return None
        return self.strength if self.strength is not None else tasks.default_strength(self.task == "inpaint")

    def run_count(self, steps: int) -> int:
        """The denoising steps a call of STEPS runs (img2img and inpainting run the end of the schedule)."""
        return tasks.steps_run(steps, self.strength_used)

    @property
    def steps_run(self) -> int:
        return self.run_count(self.steps)

    @property
    def warmup_steps_used(self) -> int:
        """The warm-up call's steps: at least one step run at the task's strength."""
        if self.task == "txt2img":
            return self.warmup_steps
        return max(self.warmup_steps, tasks.min_steps(self.strength_used))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "Protocol":
        return cls(**data)

    def request(self, **changes) -> Request:
        """The call each rung times (with CHANGES, e.g. a model's own steps), as generate runs it."""
        own = {f.name: getattr(self, f.name) for f in fields(Request)}
        return Request(**{**own, **changes}).validate()


# `quick` fits the README's main job, set-up included, in <= 8 minutes on a 2-core machine of any class: a quarter of
# the pixels, 4 steps, 2 timed runs (the seed ladder's four rungs took 5:45 with 3 runs on a Zen 4 EPYC).
PRESETS = {
    "seed": {},
    "quick": dict(width=256, height=256, steps=4, runs=2, warmup_steps=1),
}


@dataclass(frozen=True)
class Rung:
    name: str
    recipe: str  # a recipe as `sdcpu generate --recipe` takes it
    peer: str | None = None  # a peer run by its own runner and environment instead of sdcpu's child
    parent: str | None = None  # the rung this one adds a step to (the full ladder): its speedup is shown against it
    note: str | None = None  # why the rung is what it is on this machine, shown in the report


STATIC = {
    "peers": (
        Rung("diffusers eager (peer)", "baseline"),
        Rung("optimum-intel OpenVINO static (peer)", "baseline", peer="optimum-intel"),
        Rung("OpenVINO GenAI static (peer)", "baseline", peer="openvino-genai"),
        Rung("stable-diffusion.cpp f32 (peer)", "baseline", peer="stable-diffusion.cpp:f32"),
        Rung("stable-diffusion.cpp q8_0 (peer)", "baseline", peer="stable-diffusion.cpp:q8_0"),
        Rung("sdcpu auto:exact", "auto:exact"),
        Rung("sdcpu auto", "auto"),
        Rung("sdcpu auto:fast", "auto:fast"),
    ),
}
LADDERS = ("seed", *STATIC, "full")
# The full ladder tries each kind's `ladder` step in stages, in STEP_KINDS order within one: the steps that keep the
# image (0), then those that cut work (1), each on the fastest recipe so far (a backend on the fastest eager one); the
# steps that go before that recipe's backend (2); last the eager-only ones (3), alternatives on the fastest recipe
# without a backend, never kept.
STAGES = {"before_backend": 2, "eager": 3}  # by role; any other role: 1 where the step cuts work, else 0


PEER_PREFIX = "peer:"  # a --recipes item that runs a peer: peer:stable-diffusion.cpp:q8_0


def parse_recipes(text: str) -> tuple[Rung, ...]:
    """`--recipes`: recipes separated by `;`, or by `,` when every item is a named recipe or a peer
    (`baseline,system,auto`, `baseline,peer:openvino-genai,auto`)."""
    items = text.split(";") if ";" in text else text.split(",")
    if ";" not in text and not all(_whole(item.strip()) for item in items):
        items = [text]  # one recipe of steps, e.g. jemalloc,iomp,pin
    items = [item.strip() for item in items if item.strip()]
    if not items:
        raise UsageError("--recipes is empty")
    return tuple(_rung(item) for item in items)


def _whole(item: str) -> bool:
    return item in recipes.NAMED or recipes.is_auto(item) or item.startswith(PEER_PREFIX)


def _rung(item: str) -> Rung:
    """ITEM's rung; a bad recipe or peer is refused here, before any rung runs."""
    if item.startswith(PEER_PREFIX):
        try:
            peer, variant = peers.parse(item[len(PEER_PREFIX):])
        except ValueError as err:
            raise UsageError(f"--recipes: {err}") from None
        name = f"{peer.name} {variant}" if variant else peer.name
        return Rung(f"{name} (peer)", "baseline", peer=item[len(PEER_PREFIX):])
    if recipes.is_auto(item):
        auto.parse(item)
    else:
        recipes.parse(item)
    return Rung(item, item)


def rungs(ladder: str | tuple[Rung, ...], cpu):
    """A generator of the rungs of LADDER (a name, or rungs from --recipes) on CPU; send() it each rung's row."""
    if ladder in ("full", "seed"):
        yield from (_full() if ladder == "full" else _seed(cpu))
        return
    for rung in STATIC[ladder] if isinstance(ladder, str) else ladder:
        yield rung


def _seed(cpu):
    """The seed's rungs, cumulative, adapted to CPU. Its framework rung (IPEX bf16 + channels_last, then a compiled
    UNet) is, on every class, what auto's rules take at `high` for a one-shot process, beside the system rung's steps
    that can sit with it (OpenVINO cannot sit beside a preloaded allocator): an fp32 or bf16 inductor compile costs
    1.5-4 minutes in every process (232 s on a Zen 4 EPYC, 246 s on an AVX2 one, twice in the ladder) and at best tied
    OpenVINO (Zen 4, two runs: 7.39 and 7.95 s vs 7.77 and 7.17 s/image for OpenVINO bf16), whose conversion is kept
    on disk. The rung's note says so."""
    yield Rung("baseline", "baseline")
    yield Rung("+system", "system")
    chosen, _ = auto.choose(cpu, "high")
    names = {step.name for step in chosen.steps}
    system = [s for s in recipes.NAMED["system"].split(",") if not recipes.conflict({s, *names})]
    framework = ",".join(system + [str(step) for step in chosen.steps if step.name not in system])
    note = ("the seed's framework rung on this class: what auto takes at high in one process, not bf16 + compile "
            "(minutes of inductor compiling in every process)")
    yield Rung("+framework", framework, note=note)
    yield Rung("+scheduler", f"{framework},scheduler=dpm++", note=note)


def _full():
    """baseline, +system, then each step in turn on top of the fastest recipe so far (its parent), kept only if it was
    faster; the eager-only steps go on the fastest recipe that has no backend, and are alternatives, never kept."""
    yield Rung("baseline", "baseline")
    system = Rung("+system", "system", parent="baseline")
    best = eager = (recipes.NAMED["system"].split(","), system.name, (yield system))  # (recipe, rung name, row)
    for step in _tried():
        recipe, parent = _stack(step, best, eager)
        rung = Rung(f"+{step}", ",".join(recipe), parent=parent[1])
        row = yield rung
        if _role(step) == "eager" or not _applied(row, step) or not _faster(row, parent[2]):
            continue
        best = (recipe, rung.name, row)
        if not any(_role(s) == "backend" for s in recipe):
            eager = best


def _tried() -> tuple[str, ...]:
    """The steps the full ladder tries, in the order it tries them (STAGES)."""
    kinds = [k for k in recipes.STEP_KINDS.values() if k.ladder]
    return tuple(k.ladder for k in sorted(kinds, key=lambda k: STAGES.get(k.role, int(k.cuts_work))))


def _stack(step: str, best, eager):
    """(the recipe that tries STEP, the (recipe, rung name, row) it is measured against)."""
    if _role(step) == "eager":
        return [*eager[0], step], eager
    if _role(step) == "before_backend":
        tail = [s for s in best[0] if _role(s) in ("backend", "after_backend")]
        return [*(s for s in best[0] if s not in tail), step, *tail], best
    # A backend goes on the fastest eager recipe (it replaces any other backend, and gets back what that one dropped).
    # One that takes its precision as its value (OpenVINO: a compile hint, bf16 where native) drops torch's bf16,
    # which would only round the weights it converts (and miss the IR cache).
    base = eager[0] if _role(step) == "backend" else best[0]
    superseded = ("bf16",) if recipes.kind(step).own_precision else ()
    kept = [s for s in base if s not in superseded and not recipes.conflict({s, step})]
    return [*kept, step], best


def _role(step: str) -> str:
    return recipes.kind(step).role


def _applied(row, step: str) -> bool:
    return any(s["step"] == step and s["applied"] for s in row.get("steps", ()))


def _faster(row, than) -> bool:
    return "median_s" in row and ("median_s" not in than or row["median_s"] < than["median_s"])
