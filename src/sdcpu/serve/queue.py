"""The worker: one thread owns the pipeline and runs one pipeline call at a time (inference is CPU-bound: two at once
only share the same cores); requests wait in a bounded queue in front of it.

The thread first loads, optimizes and warms up the model (`prepare`, so the first request pays no compile), then
takes jobs in arrival order. With max_batch > 1, the jobs waiting with the same size, steps, guidance and scheduler
as the first one join it in one pipeline call (a prompt list), up to max_batch images; benchmarks/serve_batching.py
measures whether that is faster on a machine (it is off by default). An img2img or inpainting job runs alone.

The call running is `Worker.running` (its step, its latest latents: /sdapi/v1/progress reads it); `interrupt()` stops
it at its next step, and its jobs get the images of the latents it has. A call still running `max_seconds` after it
began (serve --max-request-seconds) stops at its next step too, and its jobs fail with TimedOut (504).

`cancel(future)` forgets a job whose client has gone: a waiting one leaves the queue, a running one is dropped from
its call, and a call none of whose jobs is still wanted stops at its next step, so the next job starts at once.
`drain(seconds)` (on SIGTERM) refuses new jobs and lets those queued finish; any still queued or running SECONDS
later fail with ShuttingDown (503), the running call stopped at its next step.
"""

import collections
import enum
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from sdcpu.models import schedulers
from sdcpu.pipeline import generate, lora
from sdcpu.serve.schemas import Job

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The bounded queue is full: answered 503 with Retry-After."""


class NotReady(Exception):
    """The model is still loading or warming up (or failed to): answered 503 with the reason."""


class GenerationFailed(Exception):
    """The pipeline raised while making a request's images: 500."""


class TimedOut(Exception):
    """The pipeline call ran past max_seconds and was stopped: 504."""


class ShuttingDown(Exception):
    """The server is shutting down and its drain time is over: 503."""


class ClientGone(Exception):
    """The job's client has gone: no one reads its answer."""


class Phase(enum.Enum):
    """Where the worker is: preparing its pipeline, ready for jobs, or failed to prepare it (Worker.error says why)."""

    PREPARING = "preparing"
    READY = "ready"
    FAILED = "failed"


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
    steps: int  # the denoising steps it runs
    started: float = field(default_factory=time.monotonic)
    step: int = 0  # steps done
    latents: object = None  # after the last step done
    interrupted: bool = False
    timed_out: bool = False
    aborted: bool = False  # the drain time is over


def batch_key(job: Job) -> tuple:
    r = job.request
    # an edit's job runs alone: generate.run_batch takes one edit per call, and each request's Edit is its own object
    return r.width, r.height, r.steps, r.guidance, job.scheduler, id(job.edit), job.loras


class Worker:
    def __init__(self, prepare, *, max_queue: int, max_batch: int = 1, max_seconds: float | None = None,
                 on_fatal=lambda error: None):
        """PREPARE() -> pipeline runs on the worker thread before any job; ON_FATAL(error) is told when it fails;
        MAX_SECONDS bounds each pipeline call (None: unbounded)."""
        self.max_queue, self.max_batch, self.max_seconds = max_queue, max_batch, max_seconds
        self.phase, self.error = Phase.PREPARING, None  # error: why preparing failed
        self._preparing = "loading the model"  # the part of the preparation under way (PREPARE sets `state`)
        self.pipe = None
        self.scheduler_name = None  # the recipe's scheduler, used when a request names none
        self.last_seconds = 1.0  # the last pipeline call's wall time, for Retry-After
        self.running: Running | None = None
        self._prepare, self._on_fatal = prepare, on_fatal
        self._waiting: collections.deque[tuple[Job, Future]] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._gone: set[Future] = set()  # jobs taken from the queue whose client has gone
        self._thread = threading.Thread(target=self._main, name="sdcpu-worker", daemon=True)

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    @property
    def state(self) -> str:
        """What /health says: the part of the preparation under way, `ready`, or `failed: ERROR`."""
        return {Phase.READY: "ready", Phase.FAILED: f"failed: {self.error}"}.get(self.phase, self._preparing)

    @state.setter
    def state(self, preparing: str) -> None:
        """PREPARE says which part of the preparation is under way (`loading MODEL`)."""
        self._preparing = preparing

    def depth(self) -> int:
        """Jobs waiting (not counting the one running)."""
        return len(self._waiting)

    def start(self) -> "Worker":
        self._thread.start()
        return self

    def submit(self, job: Job) -> Future:
        """Queue JOB; its Future gets a Done. Raises NotReady or QueueFull at once instead of waiting."""
        with self._cond:
            if not self.ready or self._closing:
                raise NotReady(self.state if not self._closing else "shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (--max-queue {self.max_queue})")
            future = Future()
            self._waiting.append((job, future))
            self._cond.notify()
        return future

    def interrupt(self) -> bool:
        """Stop the call running at its next step (its jobs get the images it has); False when none runs."""
        running = self.running
        if running is not None:
            running.interrupted = True
        return running is not None

    def cancel(self, future: Future) -> None:
        """Forget the job of FUTURE: its client has gone. A running call none of whose jobs is wanted any more stops
        at its next step."""
        with self._cond:
            for item in self._waiting:
                if item[1] is future:
                    self._waiting.remove(item)
                    future.cancel()
                    return
            if not future.done():
                self._gone.add(future)  # running, or about to run

    def drain(self, seconds: float) -> None:
        """Refuse new jobs now; fail those still queued or running SECONDS from now with ShuttingDown."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        timer = threading.Timer(seconds, self._abort, args=(seconds,))
        timer.daemon = True
        timer.start()

    def _abort(self, seconds: float) -> None:
        error = ShuttingDown(f"the server is shutting down and its {seconds:g} s drain time is over")
        with self._cond:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for _, future in waiting:
            if future.set_running_or_notify_cancel():
                future.set_exception(error)
        running = self.running
        if running is not None:
            running.aborted = True

    def close(self, timeout: float | None = None) -> None:
        """Finish the jobs already queued, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _main(self):
        try:
            self.pipe = self._prepare(self)
        except Exception as error:  # noqa: BLE001 - any failure is reported, the server cannot serve without a model
            self.error, self.phase = error, Phase.FAILED
            log.error("model preparation failed: %s", error, exc_info=error)
            self._on_fatal(error)
            return
        self._schedulers = schedulers.Swapper(self.pipe)
        self._loras = ()  # the LoRA set the pipeline runs with
        self.scheduler_name = schedulers.current_name(self.pipe)
        self.phase = Phase.READY
        while batch := self._next_batch():
            self._run(batch)

    def _next_batch(self) -> list[tuple[Job, Future]]:
        """The next job and those that may share its call; empty when closing with nothing left."""
        with self._cond:
            while not self._waiting and not self._closing:
                self._cond.wait()
            if not self._waiting:
                return []
            first = self._waiting.popleft()
            batch, images = [first], first[0].request.num_images
            for item in list(self._waiting):
                size = item[0].request.num_images
                if images + size <= self.max_batch and batch_key(item[0]) == batch_key(first[0]):
                    self._waiting.remove(item)
                    batch.append(item)
                    images += size
            return batch

    def _run(self, batch: list[tuple[Job, Future]]) -> None:
        live = [(job, future) for job, future in batch if future.set_running_or_notify_cancel()]  # not given up
        if not live:
            return
        jobs = [job for job, _ in live]
        running = self.running = Running(jobs, [future for _, future in live], jobs[0].steps_run)

        def on_step(index, steps, latents):
            running.step, running.steps, running.latents = index + 1, steps, latents
            first = 0
            for job in jobs:
                if job.on_step is not None:
                    job.on_step(index, steps, latents[first:first + job.request.num_images])
                first += job.request.num_images
            if self.max_seconds is not None and time.monotonic() - running.started > self.max_seconds:
                running.timed_out = True
            wanted = not self._gone.issuperset(running.futures)
            return running.interrupted or running.timed_out or running.aborted or not wanted

        try:
            self._schedulers.use(jobs[0].scheduler)
            self._use_loras(jobs[0].loras)
            result = generate.run_batch(self.pipe, [job.request for job in jobs], jobs[0].edit, on_step)
        except Exception as error:  # noqa: BLE001 - the requests fail, the worker goes on
            log.exception("generation failed")
            for _, future in live:
                future.set_exception(error)
            return
        finally:
            self.running = None
            with self._cond:  # the jobs of no other call can be in it: each is queued, done or in this call
                gone, self._gone = self._gone & set(running.futures), set()
        self.last_seconds = result.seconds
        error = None
        if running.aborted:
            error = ShuttingDown(f"the server is shutting down: the request was stopped after {running.step} of "
                                 f"{running.steps} steps when its drain time was over")
        elif running.timed_out:
            error = TimedOut(f"the request ran past --max-request-seconds {self.max_seconds:g} and was stopped after "
                             f"{running.step} of {running.steps} steps; ask for fewer steps, images or pixels")
        elif gone.issuperset(running.futures):
            error = ClientGone("every client of the call has gone")
        if error is not None:
            for _, future in live:
                future.set_exception(error)
            return
        images = iter(result.images)
        for job, future in live:
            future.set_result(Done([next(images) for _ in job.request.seeds()], result.seconds, len(result.images),
                                   running.step, running.interrupted))

    def _use_loras(self, loras: tuple) -> None:
        """Switch the pipeline to the LoRA set LORAS (sdcpu.pipeline.lora.use: adapters on the eager UNet, compiled sets kept
        on OpenVINO), unless it runs with it already; a set that cannot apply fails its job alone."""
        if loras != self._loras:
            self._loras = None  # unknown until use() has finished: a failed switch is switched again next time
            log.info("lora: %s", lora.use(self.pipe, loras))
            self._loras = loras
