"""The worker: one thread owns the pipelines and runs one pipeline call at a time (inference is CPU-bound: two at once
only share the same cores); requests wait in a bounded queue in front of it.

The thread first loads, optimizes and warms up each model served (serve/served.py: the default one last, so that it is
held; the others while they fit --max-memory; the first request pays no compile), then takes jobs in arrival order;
a job for a model released is preceded by its preparation again, from sdcpu's caches. With max_batch > 1, the jobs
waiting with the same model, size, steps, guidance and scheduler as the first one join it in one pipeline call (a
prompt list), up to max_batch images; benchmarks/serve_batching.py measures whether that is faster on a machine (it
is off by default). An img2img, inpainting or ControlNet job runs alone.

Each job has an `Owner`: the peer address that sent it and the A1111 task id it named (force_task_id), if any. The
call running is `Worker.running` (its step, its latest latents: the progress routes read it, showing a job's preview
only to a caller its owner `matches`); `interrupt(caller)` stops the jobs of the running call that CALLER owns, and
the call at its next step once none of its jobs is left to run on; those jobs get the images of the latents it has.
`task(id)` says where the job of a task id is: running, waiting (its place) or recently finished. A call still running
`max_seconds` after it began (serve --max-request-seconds) stops at its next step too, and its jobs fail with TimedOut
(504).

`cancel(future)` forgets a job whose client has gone: a waiting one leaves the queue, a running one is dropped from
its call, and a call none of whose jobs is still wanted stops at its next step, so the next job starts at once.
`drain(seconds)` (on SIGTERM) refuses new jobs and lets those queued finish; any still queued or running SECONDS
later fail with ShuttingDown (503), the running call stopped at its next step.
"""

import collections
import copy
import enum
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from sdcpu import families
from sdcpu.models import schedulers, state
from sdcpu.pipeline import control, generate, lora
from sdcpu.serve.calls import FINISHED_TASKS, Done, Owner, Queued, Running, TaskState
from sdcpu.serve.failures import ClientGone, NotReady, QueueFull, ShuttingDown, TaskInFlight, TimedOut
from sdcpu.serve.schemas import Job
from sdcpu.serve.served import Facts, Model, Models

log = logging.getLogger(__name__)


class Phase(enum.Enum):
    """Where the worker is: preparing its pipeline, ready for jobs, or failed to prepare it (Worker.error says why)."""

    PREPARING = "preparing"
    READY = "ready"
    FAILED = "failed"


def batch_key(job: Job) -> tuple:
    r = job.request
    # an edit's or a control's job runs alone: generate.run_batch takes one of each per call, and each request's Edit
    # and Control are its own objects; a call never mixes two models
    return (job.model, r.width, r.height, r.steps, r.guidance, job.scheduler, id(job.edit), job.loras, job.hires,
            id(job.control))


@dataclass
class Runtime:
    """The worker's state of a held pipeline: its scheduler swapper and the LoRA set it runs with (None: unknown)."""

    schedulers: schedulers.Swapper
    loras: tuple | None = ()


class Worker:
    def __init__(self, models: Models, *, max_queue: int, max_batch: int = 1, max_seconds: float | None = None,
                 on_fatal=lambda error: None):
        """MODELS: the models served, each prepared on the worker thread before any job; ON_FATAL(error) is told when
        one fails to; MAX_SECONDS bounds each pipeline call (None: unbounded)."""
        self.max_queue, self.max_batch, self.max_seconds = max_queue, max_batch, max_seconds
        self.phase, self.error = Phase.PREPARING, None  # error: why preparing failed
        self._preparing = "loading the model"  # the part of the preparation under way (PREPARE sets `state`)
        self.models = models
        self.pipe = None  # the pipeline of the model last used
        self.last_seconds = 1.0  # the last pipeline call's wall time, for Retry-After
        self.seconds_per_work: float | None = None  # the last call's seconds per pixel-step, for a queued job's ETA
        self.running: Running | None = None
        self._on_fatal = on_fatal
        self._waiting: collections.deque[Queued] = collections.deque()
        self._finished: collections.deque[str] = collections.deque(maxlen=FINISHED_TASKS)  # task ids, oldest first
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

    def submit(self, job: Job, owner: Owner) -> Future:
        """Queue JOB, sent by OWNER; its Future gets a Done. Raises NotReady or QueueFull at once instead of
        waiting."""
        with self._cond:
            self._check_room()
            if owner.task is not None and self._in_flight(owner.task):
                raise TaskInFlight(f"force_task_id {owner.task!r} names a job queued or running: give each job its "
                                   "own task id")
            future = Future()
            self._waiting.append(Queued(job, future, owner))
            self._cond.notify()
        return future

    def check_room(self) -> None:
        """Raise what a job submitted now would raise at once (NotReady, QueueFull): what an upload is answered before
        it is read."""
        with self._cond:
            self._check_room()

    def _check_room(self) -> None:
        if not self.ready or self._closing:
            raise NotReady(self.state if not self._closing else "shutting down")
        if len(self._waiting) >= self.max_queue:
            raise QueueFull(f"{len(self._waiting)} requests are waiting (--max-queue {self.max_queue})")

    def interrupt(self, caller: Owner) -> bool:
        """Interrupt the jobs of the running call that CALLER owns (Owner.matches): the call stops at its next step once
        each of its jobs is interrupted or gone, and they get the images it has; False when CALLER owns none."""
        with self._cond:
            running = self.running
            if running is None:
                return False
            mine = {future for future, owner in zip(running.futures, running.owners) if owner.matches(caller)}
            running.halted |= mine
        return bool(mine)

    def _in_flight(self, task: str) -> bool:
        running = self.running
        return (running is not None and any(owner.task == task for owner in running.owners)
                or any(item.owner.task == task for item in self._waiting))

    def task(self, task: str) -> TaskState:
        """Where the job of TASK (a force_task_id) is."""
        with self._cond:
            running = self.running
            if running is not None and any(owner.task == task for owner in running.owners):
                return TaskState(active=True)
            places = [i for i, item in enumerate(self._waiting) if item.owner.task == task]
            if places:
                work = sum(item.job.work for item in list(self._waiting)[:places[0] + 1])
                return TaskState(queued=True, place=places[0] + 1, waiting=len(self._waiting), work=work)
            return TaskState(completed=task in self._finished)

    def cancel(self, future: Future) -> None:
        """Forget the job of FUTURE: its client has gone. A running call none of whose jobs is wanted any more stops
        at its next step."""
        with self._cond:
            for item in self._waiting:
                if item.future is future:
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
        for item in waiting:
            future = item.future
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
            for model in reversed(self.models.all):  # the default last: held whatever the budget
                self._hold(model)
        except Exception as error:  # noqa: BLE001 - any failure is reported, the server cannot serve without a model
            self.error, self.phase = error, Phase.FAILED
            log.error("model preparation failed: %s", error, exc_info=error)
            self._on_fatal(error)
            return
        self.phase = Phase.READY
        while batch := self._next_batch():
            self._run(batch)

    def _next_batch(self) -> list[Queued]:
        """The next job and those that may share its call; empty when closing with nothing left."""
        with self._cond:
            while not self._waiting and not self._closing:
                self._cond.wait()
            if not self._waiting:
                return []
            first = self._waiting.popleft()
            batch, images = [first], first.job.request.num_images
            for item in list(self._waiting):
                size = item.job.request.num_images
                if images + size <= self.max_batch and batch_key(item.job) == batch_key(first.job):
                    self._waiting.remove(item)
                    batch.append(item)
                    images += size
            return batch

    def _run(self, batch: list[Queued]) -> None:
        live = [item for item in batch if item.future.set_running_or_notify_cancel()]  # not given up
        if not live:
            return
        jobs = [item.job for item in live]
        with self._cond:
            running = self.running = Running(jobs, [item.future for item in live], [item.owner for item in live],
                                             jobs[0].steps_run)

        def on_step(index, steps, latents):
            running.step, running.steps, running.latest = index + 1, steps, (index + 1, latents)
            first = 0
            for job in jobs:
                if job.on_step is not None:
                    job.on_step(index, steps, latents[first:first + job.request.num_images])
                first += job.request.num_images
            if self.max_seconds is not None and time.monotonic() - running.started > self.max_seconds:
                running.timed_out = True
            wanted = set(running.futures) - self._gone - running.halted
            return running.timed_out or running.aborted or not wanted

        try:
            model = self.models.find(jobs[0].model)
            self._hold(model)
            running.started = time.monotonic()  # a model prepared again first: not the call's time
            model.runtime.schedulers.use(jobs[0].scheduler)
            self._use_loras(model.runtime, jobs[0].loras)
            result = generate.run_batch(self.pipe, [job.request for job in jobs], jobs[0].edit, on_step,
                                        keep_prompts=True, hires=jobs[0].hires, control=jobs[0].control)
        except Exception as error:  # noqa: BLE001 - the requests fail, the worker goes on
            log.exception("generation failed")
            for item in live:
                item.future.set_exception(error)
            return
        finally:
            with self._cond:  # the jobs of no other call can be in it: each is queued, done or in this call
                self.running = None
                gone, self._gone = self._gone & set(running.futures), set()
                self._finished.extend(item.owner.task for item in live if item.owner.task is not None)
        self.last_seconds = result.seconds
        if running.step == running.steps:  # a whole call: its time per pixel-step holds for the next ones
            self.seconds_per_work = result.seconds / sum(job.work for job in jobs)
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
            for item in live:
                item.future.set_exception(error)
            return
        images, cut = iter(result.images), running.step < running.steps
        for job, future, _ in live:
            future.set_result(Done([next(images) for _ in job.request.seeds()], result.seconds, len(result.images),
                                   running.step, cut and future in running.halted))

    def _hold(self, model: Model):
        """MODEL's pipeline, prepared unless held (served.Models.hold), made the one in use; its facts taken the
        first time."""
        if model.pipe is None:
            self.pipe = None  # the pipeline in use may be the one released to make room: nothing else holds it
        self.pipe = self.models.hold(model, self)
        if model.runtime is None:
            model.runtime = Runtime(schedulers.Swapper(self.pipe))
        if model.facts is None:
            family = families.of(self.pipe)
            model.facts = Facts(generate.defaults_for(self.pipe), copy.deepcopy(self.pipe.tokenizer),
                                schedulers.current_name(self.pipe), family,
                                control.refusal(family, state.of(self.pipe).recipe))
        return self.pipe

    def _use_loras(self, runtime: Runtime, loras: tuple) -> None:
        """Switch the pipeline (RUNTIME: the worker's state of it) to the LoRA set LORAS (sdcpu.pipeline.lora.use:
        adapters on the eager UNet, compiled sets kept on OpenVINO), unless it runs with it already; a set that cannot
        apply fails its job alone."""
        if loras != runtime.loras:
            runtime.loras = None  # unknown until use() has finished: a failed switch is switched again next time
            log.info("lora: %s", lora.use(self.pipe, loras))
            runtime.loras = loras
