"""Scheduler names users type, mapped onto diffusers scheduler classes; swapped through `from_config`."""

from dataclasses import dataclass, field

from sdcpu.errors import UsageError


@dataclass(frozen=True)
class SchedulerChoice:
    cls: str  # a diffusers class name
    options: dict = field(default_factory=dict)  # overrides on top of the model's own scheduler config


SCHEDULERS = {
    "pndm": SchedulerChoice("PNDMScheduler"),
    "ddim": SchedulerChoice("DDIMScheduler"),
    "euler": SchedulerChoice("EulerDiscreteScheduler"),
    "euler-a": SchedulerChoice("EulerAncestralDiscreteScheduler"),
    "heun": SchedulerChoice("HeunDiscreteScheduler"),
    "dpm++": SchedulerChoice("DPMSolverMultistepScheduler"),
    "dpm++-karras": SchedulerChoice("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc": SchedulerChoice("UniPCMultistepScheduler"),
    "lcm": SchedulerChoice("LCMScheduler"),
}


def set_scheduler(pipe, name: str) -> None:
    """Replace PIPE's scheduler by NAME's class, keeping the model's own betas and timestep settings."""
    import diffusers

    choice = lookup(name)
    cls = getattr(diffusers, choice.cls)
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **choice.options)


class Swapper:
    """PIPE's schedulers by name, each made once from the pipeline's own (the recipe's), never from another swapped
    one, whose options it would inherit (dpm++ made from dpm++-karras's config keeps Karras sigmas)."""

    def __init__(self, pipe):
        self.pipe, self.made = pipe, {None: pipe.scheduler}

    def use(self, name: str | None) -> str:
        """Swap PIPE to NAME's scheduler (None: the pipeline's own); its current_name."""
        if name not in self.made:
            self.pipe.scheduler = self.made[None]
            set_scheduler(self.pipe, name)
            self.made[name] = self.pipe.scheduler
        self.pipe.scheduler = self.made[name]
        return current_name(self.pipe)


def lookup(name: str) -> SchedulerChoice:
    if name not in SCHEDULERS:
        raise UsageError(f"unknown scheduler {name!r}; choose from: {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name]


def current_name(pipe) -> str:
    """The table name of PIPE's scheduler, or its class name when the table has none."""
    cls = type(pipe.scheduler).__name__
    karras = bool(pipe.scheduler.config.get("use_karras_sigmas"))
    for name, choice in SCHEDULERS.items():
        if choice.cls == cls and bool(choice.options.get("use_karras_sigmas")) == karras:
            return name
    return cls
