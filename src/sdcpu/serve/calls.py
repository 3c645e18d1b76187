"""What the worker's queue (serve/queue.py) holds and reports: who sent a job or asks of one (Owner), a job waiting
(Queued), the pipeline call running (Running: its step, its latest latents, its progress), where a task id's job is
(TaskState), and what a call made (Done)."""

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import NamedTuple

from sdcpu.serve.schemas import Job


@dataclass(frozen=True)
class Owner:
    """Who sent a job, or who calls progress or interrupt: the peer's address (None: unknown) and the A1111 task id
    named (force_task_id, id_task), if any."""

    host: str | None
    task: str | None = None

    @classmethod
    def of(cls, request, task: str | None = None) -> "Owner":
        """Who sends REQUEST (a starlette Request): its peer's address, and the task id TASK it names."""
        return cls(request.client.host if request.client else None, task)

    def matches(self, caller: "Owner") -> bool:
        """CALLER may watch and interrupt this owner's job: it names the job's task id or, naming none, it is the
        job's peer and the job was sent without a task id."""
        if caller.task is not None:
            return caller.task == self.task
        return self.task is None and self.host is not None and self.host == caller.host


class Queued(NamedTuple):
    """A job submitted: the job, the Future its answer goes to, who sent it."""

    job: Job
    future: Future
    owner: Owner


@dataclass(frozen=True)
class TaskState:
    """Where the job of a task id is (A1111's /internal/progress): running, waiting (place, 1-based, of `waiting`), or
    recently finished; all false when unknown."""

    active: bool = False
    queued: bool = False
    completed: bool = False
    place: int = 0
    waiting: int = 0
    work: int = 0  # queued: the pixel-steps (schemas.Job.work) of the jobs before it and its own


FINISHED_TASKS = 16  # the task ids of finished jobs remembered for /internal/progress (A1111 keeps 16)


@dataclass(frozen=True)
class Done:
    images: list  # PIL images of the job, in seed order
    seconds: float  # wall time of the pipeline call that made them
    batch_images: int  # images made by that call (more than the job's when batched)
    steps_done: int  # denoising steps run (fewer than asked when interrupted)
    interrupted: bool = False


@dataclass
class Running:
    """The pipeline call in progress."""

    jobs: list[Job]
    futures: list[Future]  # the jobs' own, in the same order
    owners: list[Owner]  # the jobs' own, in the same order
    steps: int  # the denoising steps it runs
    started: float = field(default_factory=time.monotonic)
    step: int = 0  # steps done
    latest: tuple[int, object] | None = None  # (step, latents after it) of the last step done, set at once
    halted: frozenset[Future] = frozenset()  # the jobs interrupted by their owner
    timed_out: bool = False
    aborted: bool = False  # the drain time is over

    def progress(self) -> tuple[float, float | None]:
        """The share of its steps done, and the seconds left at the time per step so far (None before a step)."""
        done = self.step / self.steps
        elapsed = time.monotonic() - self.started
        return done, elapsed / done - elapsed if done else None

    def mine(self, caller: Owner) -> tuple[int, Job, Future] | None:
        """The first job CALLER may watch (its first image's index in the call's images, the job, its Future); None:
        CALLER owns none."""
        first = 0
        for job, future, owner in zip(self.jobs, self.futures, self.owners):
            if owner.matches(caller):
                return first, job, future
            first += job.request.num_images
        return None
