"""Asynchronous jobs (serve's /v1/jobs routes, serve/job_routes.py): a job is submitted to the same queue, with the same
admission (503 when full or not ready) and checks as the synchronous routes, and answered at once with its id; its
status (queue position, step, ETA, a preview), result and cancellation are asked by that id, which is the job's only
key (128 random bits: whoever has it, and the server's API key, may read or cancel the job).

A job's id is also its A1111 task id: /internal/progress and /sdapi/v1/interrupt given it as `id_task` report and
stop it, and a synchronous A1111 request sent with `force_task_id` is reported here by that id while it is queued or
running (its result goes to its own caller). A job keeps running when no one polls it. A finished job (succeeded,
interrupted with the images it had, failed with its error, cancelled) is kept `keep_seconds` after it finished, and
at most options.KEPT_JOBS of them (the oldest forgotten first): its id then answers 404.
"""

import asyncio
import collections
import enum
import secrets
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from sdcpu.serve import failures, schemas
from sdcpu.serve.options import KEPT_JOBS
from sdcpu.serve.calls import Owner



class Status(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    INTERRUPTED = "interrupted"  # stopped by /sdapi/v1/interrupt: its result is the images of the steps it had
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class Record:
    """A job submitted: its id, the job, its Future in the worker's queue, and, once finished, what it came to."""

    id: str
    job: schemas.Job
    future: Future
    kind: str  # "generation" or "edit"
    created: float = field(default_factory=time.time)
    status: Status | None = None  # set once finished; queued or running until then (the worker says which)
    finished: float | None = None  # time.monotonic() when it finished
    images: list[str] | None = None  # base64 PNGs
    info: dict | None = None
    error: dict | None = None  # failures.Failure.body of why it failed
    error_status: int | None = None
    waiter: asyncio.Task | None = None  # awaits the job's outcome and records it

    def finish(self, status: Status, **outcome) -> None:
        if self.status is None:  # a cancelled job's outcome comes too late to count
            self.status, self.finished = status, time.monotonic()
            for name, value in outcome.items():
                setattr(self, name, value)


class Jobs:
    def __init__(self, service, keep_seconds: float):
        self.service, self.keep_seconds = service, keep_seconds
        self._records: dict[str, Record] = {}
        self._finished: collections.deque[str] = collections.deque()  # ids, in the order they finished

    def submit(self, job: schemas.Job, host: str | None, kind: str) -> Record:
        """Queue JOB, sent from HOST (NotReady, QueueFull: raised at once), as a job of its own id."""
        ident = f"job-{secrets.token_hex(16)}"
        record = Record(ident, job, self.service.submit(job, Owner(host, ident)), kind)
        self._records[ident] = record
        record.waiter = asyncio.ensure_future(self._wait(record))
        return record

    async def _wait(self, record: Record) -> None:
        try:
            images, info = await self.service.answer(record.job, record.future, None)
        except asyncio.CancelledError:  # cancelled while queued (Worker.cancel), or the server stopping
            record.finish(Status.CANCELLED)
        except Exception as error:  # noqa: BLE001 - the job's error, answered to whoever asks for its result
            failure = failures.of(error)
            record.finish(Status.FAILED, error=failure.body(error), error_status=failure.status)
        else:
            record.finish(Status.INTERRUPTED if info["interrupted"] else Status.SUCCEEDED, images=images, info=info)
        self._finished.append(record.id)
        self._forget()

    def get(self, ident: str) -> Record | None:
        self._forget()
        return self._records.get(ident)

    def cancel(self, record: Record) -> None:
        """Cancel RECORD's job unless finished: a queued one leaves the queue, a running one is dropped from its call
        (which stops at its next step when no other job is in it)."""
        if record.status is None:
            record.finish(Status.CANCELLED)
            self.service.worker.cancel(record.future)

    async def result(self, record: Record, seconds: float) -> None:
        """Return once RECORD's job has finished, or SECONDS from now."""
        if record.status is None and seconds > 0:
            await asyncio.wait({record.waiter}, timeout=seconds)

    async def status(self, ident: str, record: Record | None, preview: bool) -> dict | None:
        """What GET /v1/jobs/ID answers: RECORD's status, or that of a synchronous request's task id IDENT in flight
        (RECORD None); None when neither is known."""
        worker = self.service.worker
        state = worker.task(ident)
        if record is None and not (state.active or state.queued):
            return None
        answer = {"id": ident, "object": "image.job", "status": None, "created_at": None, "task": None,
                  "model": record and record.job.model, "queue_position": None, "queue_length": None, "step": None,
                  "steps": None, "progress": None, "eta_seconds": None, "finished_at": None, "expires_at": None,
                  "preview": None, "preview_step": None, "error": None, "synchronous": record is None}
        if record is not None:
            answer |= {"created_at": int(record.created), "task": record.kind, "steps": record.job.steps_run}
            if record.status is not None:
                ended = time.time() - (time.monotonic() - record.finished)
                return answer | {"status": record.status.value, "finished_at": int(ended), "error": record.error,
                                 "expires_at": int(ended + self.keep_seconds),
                                 "step": record.info["steps_done"] if record.info else None}
        running = worker.running
        mine = running.mine(Owner(None, ident)) if state.active and running is not None else None
        if mine is not None:
            done, eta = running.progress()
            shown = await self.service.preview_of(running, mine) if preview else None
            return answer | {"status": Status.RUNNING.value, "step": running.step, "steps": running.steps,
                             "progress": done, "eta_seconds": eta, "preview": shown and shown.png,
                             "preview_step": shown and shown.step}
        if state.queued:
            rate = worker.seconds_per_work
            ahead = None if rate is None else state.work * rate + _left(worker.running)
            return answer | {"status": Status.QUEUED.value, "queue_position": state.place,
                             "queue_length": state.waiting, "step": 0, "progress": 0.0, "eta_seconds": ahead}
        if record is None:
            return None  # a synchronous request's, just over
        # between the queue and its call, or its call just over and its outcome not recorded yet
        return answer | {"status": (Status.RUNNING if state.completed else Status.QUEUED).value}

    def _forget(self) -> None:
        """Forget the finished jobs kept past keep_seconds, and the oldest beyond KEPT_JOBS."""
        now = time.monotonic()
        while self._finished:
            oldest = self._records.get(self._finished[0])
            if oldest is not None and len(self._finished) <= KEPT_JOBS and now - oldest.finished < self.keep_seconds:
                break
            self._records.pop(self._finished.popleft(), None)


def _left(running) -> float:
    """The seconds the call RUNNING (None: none) has left, at its time per step so far (0 before its first step:
    unknown, not counted)."""
    if running is None:
        return 0.0
    return running.progress()[1] or 0.0
