"""What every optimization step shares: the Skip signal and the outcome each step leaves in the report."""

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
