"""What every optimization step shares: the Skip signal, the outcome each step leaves in the report, and the call
defaults a step may set on the pipeline."""

from dataclasses import dataclass


class Skip(Exception):
    """Raised by a step that cannot or should not apply here; its message is the reason shown to the user."""


@dataclass(frozen=True)
class Outcome:
    step: str  # the step as written in the recipe, e.g. "bf16!" or "scheduler=dpm++"
    applied: bool
    detail: str  # what was done, or why it was skipped
    seconds: float = 0.0  # time the step itself took (lazy compilers pay most on the first call instead)

    def __str__(self):
        return f"{self.step}: {'applied' if self.applied else 'skipped'}: {self.detail}"


def defaults(pipe) -> dict:
    """Call defaults the recipe set (steps=, guidance=), as pipeline keyword arguments."""
    return dict(getattr(pipe, "sdcpu_defaults", {}))
