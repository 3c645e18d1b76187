"""The ways a request can fail (raised by the worker, serve/queue.py, the jobs and the routes), and how each is
answered, in one table: its HTTP status, its OpenAI error `type` (and `code`), and Retry-After where trying again
later may work. The app's exception handlers, a stream's `error` event and a job's
error (serve/jobs.py) all read it."""

from dataclasses import dataclass

from sdcpu.serve import schemas, uploads


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


class Interrupted(Exception):
    """An OpenAI request its own caller interrupted (/sdapi/v1/interrupt): 499, type and code `interrupted`; OpenAI's
    API has no partial answer."""


class TaskInFlight(Exception):
    """A job names the task id (force_task_id) of a job queued or running: 409; a task id names one job at a time,
    else its interrupt and progress would reach both."""


class ClientGone(Exception):
    """The job's client has gone: no one reads its answer."""


class NotFound(Exception):
    """A job id the server does not know (never given, or forgotten): 404."""


class NotFinished(Exception):
    """A job's result asked for before it finished, or after it was cancelled: 409."""


class NotServed(Exception):
    """What this server's set-up cannot serve (the jobs API on one of several processes sharing a port): 501."""


@dataclass(frozen=True)
class Failure:
    status: int
    kind: str  # the error's `type`
    retry_after: str | None = None  # seconds, for the Retry-After header
    code: str | None = None  # the error's `code`, where a client tells it apart by one
    said: str = "{}"  # the message, of the error's own

    def body(self, error: BaseException | str) -> dict:
        """The JSON error answering ERROR (an exception, or its message)."""
        message = self.said.format(error)
        return {"error": {"message": message, "type": self.kind} | ({"code": self.code} if self.code else {})}

    @property
    def headers(self) -> dict | None:
        return {"Retry-After": self.retry_after} if self.retry_after else None


FAILURES = {
    schemas.BadRequest: Failure(400, "invalid_request_error"),
    TaskInFlight: Failure(409, "invalid_request_error"),  # a force_task_id naming a job in flight
    NotFound: Failure(404, "invalid_request_error"),
    NotFinished: Failure(409, "invalid_request_error", code="job_not_finished"),
    NotServed: Failure(501, "not_served"),
    TimedOut: Failure(504, "timeout"),
    ShuttingDown: Failure(503, "server_shutting_down", retry_after="5"),
    # an upload is read and decoded in a second or two
    uploads.UploadsFull: Failure(503, "server_busy", retry_after="2", said="server busy: {}; retry later"),
    ClientGone: Failure(499, "client_closed_request"),  # nginx's "client closed request": read by /metrics only
    Interrupted: Failure(499, "interrupted", code="interrupted"),  # asked for by the client: never retried
    GenerationFailed: Failure(500, "server_error"),
}
SERVER_ERROR = FAILURES[GenerationFailed]


def of(error: BaseException) -> Failure:
    """How ERROR is answered (a failure of no known kind: 500)."""
    return next((failure for kind, failure in FAILURES.items() if isinstance(error, kind)), SERVER_ERROR)
