"""The `auto` recipe: the best this machine supports, with reasons: what `sdcpu tune` measured here when a tuned
profile matches (sdcpu.recipes.profiles says how), else the rules of this CPU's class (sdcpu.recipes.auto_rules: what measured
fastest on that class, and what it rests on).

`auto` takes a quality level (`auto:exact`, `auto` = `auto:high`, `auto:fast`; `--quality` on the command line) that
bounds which steps it may use, measured against the fp32 image of the same seed:
- exact: fp32 steps only; every image within 1e-4 max abs of eager fp32 (tests/test_steps.py, test_openvino.py).
- high: adds bf16 (torch or OpenVINO) where the CPU has it natively: 48-49 dB PSNR, SSIM >= 0.999 measured on
  random:sd15; the bound is 40 dB. Where bf16 is not native, high is exact.
- fast: adds steps that cut work: int8 (NNCF hybrid, 39.5 dB, SSIM 0.996 measured) where the UNet runs on OpenVINO,
  deepcache=2 (42 dB, SSIM 0.998 measured) where it runs eagerly, and tiny-vae (TAESD, a distilled decoder: its
  fidelity needs real weights to measure, none here); no bound beyond "recognisably the same image" with real weights.
"""

import dataclasses
import importlib.util
import os

from sdcpu import recipes
from sdcpu.errors import UsageError
from sdcpu.recipes import auto_rules, memory, profiles, Recipe, Step
from sdcpu.system import launcher

QUALITIES = ("exact", "high", "fast")
NO_PROFILE = ("no tuned profile matches this machine, model and versions: the rules of this CPU's class below, "
              "measured on a machine of that class or taken from published figures, as each says (`sdcpu tune` measures "
              "what is fastest on this one)")
BACKENDS = frozenset(recipes.with_role("backend"))


def parse(text: str) -> str:
    """`auto` or `auto:LEVEL` -> the quality level; UsageError for another level."""
    level = text.partition(":")[2] or "high"
    if level not in QUALITIES:
        raise UsageError(f"unknown quality {level!r}: choose from {', '.join(QUALITIES)}")
    return level


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _unavailable(candidate: auto_rules.Candidate, long_running: bool) -> str | None:
    """Why CANDIDATE cannot run in this process whatever the memory, or None."""
    missing = [module for module in candidate.needs if not _installed(module)]
    if missing:
        return f"{' and '.join(missing)} not installed"
    if not long_running and any(recipes.kind(step.name).per_process for step in recipes.parse(candidate.steps).steps):
        return "its one-time cost pays only in a long-running process (sdcpu serve)"
    return None


def _for_family(candidates, job: memory.Job) -> tuple[list, dict]:
    """CANDIDATES in the order to try them for JOB's family: those measured slower for it (Candidate.slower_for)
    after the rest, each with its measurement."""
    slower = {c: dict(c.slower_for)[job.family.name] for c in candidates if job.family.name in dict(c.slower_for)}
    return sorted(candidates, key=lambda c: c in slower), slower  # a stable sort: the rest keep their order


def _releasable(candidate: auto_rules.Candidate) -> bool:
    """Whether CANDIDATE's recipe could keep one part resident at a time, without release yet: it runs on OpenVINO,
    or on eager torch (no backend step) with weights as their files hold them (not rounded to int8 or int4)."""
    steps = recipes.parse(candidate.steps)
    backends = [step for step in steps.steps if recipes.kind(step.name).role == "backend"]
    stored = steps.get("weights")
    eager = not backends and (stored is None or stored.value == "bf16")
    return steps.get(memory.RELEASE) is None and (steps.get("openvino") is not None or eager)


def _released(candidate: auto_rules.Candidate) -> auto_rules.Candidate:
    """CANDIDATE with the `release` step: tried after every candidate of its level as it is, since it costs each
    image a compile of every part on OpenVINO, a read of each part's weights again on torch
    (sdcpu.backends.release)."""
    cost = ("a compile per part per image" if recipes.parse(candidate.steps).get("openvino") is not None else
            "each part's weights paged in again per image")
    steps = ",".join(filter(None, (candidate.steps, memory.RELEASE)))
    return dataclasses.replace(candidate, steps=steps, why=f"{candidate.why}; with {memory.RELEASE}: one part "
                                                          f"resident at a time, the only way it fits this machine's "
                                                          f"memory ({cost})")


def _unmet(candidate: auto_rules.Candidate, cpu, long_running: bool, job: memory.Job) -> str | None:
    """Why CANDIDATE cannot be taken here for JOB, or None."""
    return (_refused(candidate, cpu, job) or _unavailable(candidate, long_running)
            or _need(candidate, cpu, job).unfit(cpu.memory_bytes))


def _refused(candidate: auto_rules.Candidate, cpu, job: memory.Job) -> str | None:
    """Why JOB's family refuses a step of CANDIDATE on CPU (Family.refusals), or JOB's ControlNet does; None: neither.
    """
    refuses = job.family.refusals(cpu.native_bf16)
    refused = [step.name for step in recipes.parse(candidate.steps).steps if step.name in refuses]
    return refused and f"{job.family.name}: {refuses[refused[0]]}" or _uncontrolled(recipes.parse(candidate.steps),
                                                                                       job)


def _uncontrolled(recipe: Recipe, job: memory.Job | None) -> str | None:
    """Why RECIPE cannot run JOB's ControlNet (a step whose UNet takes no residuals), or None."""
    blocking = [step.name for step in recipe.steps if not recipes.kind(step.name).control]
    if job is None or not job.control or not blocking:
        return None
    return f"a ControlNet adds its residuals to the UNet, and {blocking[0]} leaves one that takes none"


def _label(candidate: auto_rules.Candidate) -> str:
    """A candidate's steps, or what an empty recipe runs: the model eagerly in the dtype it loads in (fp32 for SD and
    SDXL, its own bf16 for FLUX.2)."""
    return candidate.steps or "eager, as loaded"


def _need(candidate: auto_rules.Candidate, cpu, job: memory.Job) -> memory.Need:
    return memory.need(job.family, recipes.parse(candidate.steps), cpu, job.width, job.height)


def choose(cpu, quality: str, long_running: bool = False,
           job: memory.Job | None = None) -> tuple[Recipe, tuple[str, ...]]:
    """The class rules' recipe for CPU at QUALITY (framework and algorithm steps) for JOB (the model's family and the
    image size; None: not known, SD's assumed), with the reasons: the class, the candidate taken, and why each one
    before it was not. Where no candidate fits the machine's memory, the one needing least is taken, and said so."""
    job = job or memory.Job.default()
    klass = auto_rules.cpu_class(cpu)
    own = [auto_rules.Candidate(steps, why) for steps, why in job.family.auto_recipes(quality, cpu.native_bf16)]
    candidates, slower = _for_family([*own, *(getattr(klass, quality) or klass.exact)], job)
    candidates += [auto_rules.LEAST_MEMORY] if quality == "fast" else []  # after even those measured slower
    reasons, passed = [f"CPU class {klass.name}: {klass.summary}"], []
    passed += [f"{c.steps} tried last for {job.family.name}: {why}" for c, why in slower.items()]
    listed = {c.steps for c in candidates}
    released = [_released(c) for c in candidates if _releasable(c)]
    candidates += [r for r in released if r.steps not in listed]
    for candidate in candidates:
        unmet = _unmet(candidate, cpu, long_running, job)
        if unmet is None:
            reasons.append(f"{quality}: {_label(candidate)}: {candidate.why}")
            break
        passed.append(f"not {_label(candidate)}: {unmet}")
    else:
        runnable = [c for c in candidates if not (_unavailable(c, long_running) or _refused(c, cpu, job))]
        # a family's own recipes were measured on it, the class rules on SD: the least needing of its own, if any
        mine = {c.steps for c in own} | {_released(c).steps for c in own if _releasable(c)}
        runnable = [c for c in runnable if c.steps in mine] or runnable
        if not runnable:  # every recipe of the level refused for the family: its model as it loads
            candidate = auto_rules.EAGER
            reasons.append(f"{quality}: the model as it loads: no recipe of this level serves {job.family.name} "
                           "(each one's reason below)")
        else:
            candidate = min(runnable, key=lambda c: (_need(c, cpu, job).peak_gib, _need(c, cpu, job).steady_gib))
            reasons.append(f"{quality}: {_label(candidate)}: none of this level's recipes fits this "
                           f"machine's memory for {job.family.name} at {job.width}x{job.height}; this one needs "
                           f"least (about {_need(candidate, cpu, job).peak_gib:.1f} GiB: expect swapping, or an "
                           f"out-of-memory kill): {candidate.why}")
    if job.describe:
        passed.append(f"memory estimated for {job.describe}")
    reasons += passed
    return recipes.parse(candidate.steps), tuple(reasons)


def _system(cpu, libs, tools, chosen: set[str]) -> tuple[tuple[Step, ...], tuple[str, ...]]:
    """The system steps the rules take here (allocator, Intel OpenMP, pinning) beside the CHOSEN steps, with their
    reasons."""
    if len(cpu.usable_physical_cores) < auto_rules.SYSTEM_MIN_CORES:
        return (), (auto_rules.system_reason(cpu),)
    options, reasons = launcher.auto_options(cpu, libs, tools)
    reasons = (f"system steps: {auto_rules.SYSTEM.why}", *reasons)
    clash = recipes.conflict({options.allocator, *chosen})
    if clash:
        reasons = tuple(r for r in reasons if not r.startswith("allocator")) + (f"no {options.allocator}: {clash}",)
        options = dataclasses.replace(options, allocator="default")
    return recipes.system_steps(options), reasons


def recipe(cpu, environ=os.environ, quality="high", workload=None, long_running=False,
           libs=None, tools=None, job: memory.Job | None = None) -> tuple[Recipe, tuple[str, ...]]:
    """(the auto recipe for CPU at QUALITY, one reason per choice): a matching tuned profile's recipe (WORKLOAD: the
    model and size, when the caller knows them), else the rules of the CPU's class. LONG_RUNNING: the process makes
    many images (serve), so a step whose one-time cost pays over many images may be taken. JOB: the model's family
    and the image size, whose memory a rule's recipe must fit (None: not known, SD's assumed)."""
    name = "auto" if quality == "high" else f"auto:{quality}"
    found = profiles.find(cpu, quality, workload)
    if found and _uncontrolled(recipes.parse(found.recipe), job):
        found = None  # the class rules pick among the recipes that can run the ControlNet
    if found:
        steps, reasons = list(recipes.parse(found.recipe).steps), (found.reason(workload is not None),)
        if quality == "fast":
            added, why = _fast_on_top(cpu, steps, job or memory.Job.default())
            steps += added
            reasons += (f"quality fast, on top of the profile: {why}",)
        return Recipe(name, tuple(steps)), reasons
    chosen, reasons = choose(cpu, quality, long_running, job)
    if libs is None or tools is None:
        libs, tools = launcher.look_around(cpu, environ)
    taken = {step.name for step in chosen.steps}
    system, why_system = _system(cpu, libs, tools, taken)
    system = tuple(step for step in system if step.name not in taken)  # a candidate may hold iomp itself
    return Recipe(name, system + chosen.steps), (NO_PROFILE, *reasons, *why_system, auto_rules.NO_CHANNELS_LAST)


def _fast_on_top(cpu, steps, job: memory.Job) -> tuple[list[Step], str]:
    """What `fast` adds to a tuned profile's recipe: the work-cutting steps of the class's first fast candidate that
    can be taken here and runs the UNet the same way (on a backend, where int8 follows it; eagerly, for deepcache).
    A work-cutting step is one whose kind says it `cuts_work`."""
    names = {step.name for step in steps}
    backend = bool(names & BACKENDS)
    for candidate in _for_family(auto_rules.cpu_class(cpu).fast, job)[0]:
        parsed = recipes.parse(candidate.steps)
        if bool({s.name for s in parsed.steps} & BACKENDS) == backend and _unmet(candidate, cpu, False, job) is None:
            added = [step for step in parsed.steps if recipes.kind(step.name).cuts_work and step.name not in names]
            return added, candidate.why
    return [Step.parse("tiny-vae")], "tiny-vae: a distilled decoder, on any backend"


def system_options(cpu, environ=os.environ, libs=None, tools=None, quality="high",
                   workload=None) -> tuple[launcher.LaunchOptions, tuple[str, ...]]:
    """The launch options of the auto recipe's system steps, with the recipe's reasons. `sdcpu launch --auto` and
    `sdcpu info` use the same."""
    chosen, reasons = recipe(cpu, environ, quality, workload, libs=libs, tools=tools)
    return recipes.launch_options(chosen), reasons


def describe_plan(cpu, environ=os.environ) -> str:
    """The auto recipe's reasons, then its launch plan (for `sdcpu info`)."""
    libs, tools = launcher.look_around(cpu, environ)
    options, reasons = system_options(cpu, environ, libs, tools)
    first = launcher.plan(cpu, options, environ, libs, tools)[0]
    return "\n".join([*(f"- {reason}" for reason in reasons), "", launcher.format_plan(first)])


def job_of(model: str, width: int, height: int) -> memory.Job | None:
    """The memory job of MODEL (a model spec) at WIDTHxHEIGHT, where its family is known before it loads."""
    from sdcpu import models

    try:
        found = models.known(models.parse_spec(model))
    except UsageError:
        return None  # loading refuses it with the reason
    return found and memory.Job(found[0], width, height)


def resolve_for(text: str, cpu, model: str, width: int, height: int,
                long_running: bool = False, control: bool = False) -> tuple[Recipe, str | None]:
    """A recipe string for a job on MODEL at WIDTHxHEIGHT (CONTROL: steered by a ControlNet): `auto` / `auto:LEVEL`
    from a tuned profile for that workload, else the class rules, with the first reason (which of the two it was) and,
    from the rules, the one of the candidate taken and why each one before it was not; another recipe as parsed."""
    if not recipes.is_auto(text):
        return recipes.parse(text), None
    quality = parse(text.strip())
    job = job_of(model, width, height)
    if control:
        job = dataclasses.replace(job or memory.Job.default(), control=True)
    found, reasons = recipe(cpu, quality=quality, workload=profiles.workload_of(model, width, height),
                            long_running=long_running, job=job)
    taken = [reason for reason in reasons if reason.startswith((f"{quality}: ", "not "))]
    return found, "; ".join([reasons[0], *taken])
