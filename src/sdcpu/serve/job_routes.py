"""The jobs API (serve/jobs.py holds the jobs): submit a generation (`POST /v1/jobs`, the body of
/v1/images/generations) or an edit (`POST /v1/jobs/edits`, the form of /v1/images/edits) and get its id at once (202,
`Location: /v1/jobs/ID`); `GET /v1/jobs/ID` its status (`?preview=true`: the latest step's preview while it runs);
`GET /v1/jobs/ID/result` its images in /v1/images/generations' shape once it has finished (`?wait=S`: up to S seconds
for it, at most MAX_WAIT), 409 while it has not; `POST /v1/jobs/ID/cancel`.

A server that is one of several sharing a port (--instances, Ray Serve with more than one replica) refuses to take
jobs (501): a status would be asked of whichever process the connection reaches, not the one holding the job.
"""

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from sdcpu.serve import openai_routes, schemas
from sdcpu.serve.failures import NotFinished, NotFound, NotServed
from sdcpu.serve.jobs import Jobs, Record, Status

MAX_WAIT = 60.0  # seconds a result request may wait for its job (proxies cut idle connections at 60-100 s)


def router(service, jobs: Jobs, enabled: bool) -> APIRouter:
    routes = APIRouter(prefix="/v1/jobs")

    def submitted(body, request: Request, kind: str, edit=None) -> JSONResponse:
        """BODY (with an EDIT) queued as a job of KIND, checked as its synchronous route checks it."""
        if body.stream:  # before the request's checks and decodes: none of them would be used
            raise schemas.BadRequest("stream: a job is polled (GET /v1/jobs/ID); stream with /v1/images/generations "
                                     "or /v1/images/edits")
        job = schemas.from_openai(body, service.limits(body.model), edit)
        record = jobs.submit(job, request.client.host if request.client else None, kind)
        return JSONResponse({"id": record.id, "object": "image.job", "status": Status.QUEUED.value,
                             "created_at": int(record.created), "task": kind},
                            status_code=202, headers={"Location": f"/v1/jobs/{record.id}"})

    def check_enabled() -> None:
        if not enabled:
            raise NotServed("this server is one of several sharing its port (--instances, or Ray Serve with several "
                            "replicas): a job's status could reach another; use the synchronous routes, or serve "
                            "one process")

    @routes.post("", status_code=202)
    async def submit(body: schemas.OpenAIImageRequest, request: Request):
        """Queue a generation (the body of /v1/images/generations, without stream) as a job: its id at once."""
        check_enabled()
        return submitted(body, request, "generation")

    @routes.post("/edits", status_code=202)
    async def submit_edit(request: Request):
        """Queue an edit (the form of /v1/images/edits) as a job: its id at once."""
        check_enabled()
        body, edit = await openai_routes.edit_form(service, request)
        return submitted(body, request, "edit", edit)

    @routes.get("/{ident}")
    async def status(ident: schemas.Name, preview: bool = False):
        """The job's status: queued (its place and an ETA from the last call's time per pixel-step), running (step,
        steps, progress, ETA; the preview of its latest step with preview=true), or how it finished. A synchronous
        request's force_task_id answers too while the request is in flight, `synchronous` true."""
        answer = await jobs.status(ident, jobs.get(ident), preview)
        if answer is None:
            raise missing(ident)
        return answer

    @routes.get("/{ident}/result")
    async def result(ident: schemas.Name, wait: float = Query(0, ge=0, le=MAX_WAIT)):
        """The job's images and info, in /v1/images/generations' answer; waiting up to WAIT seconds for it. 409 while
        it has not finished or when it was cancelled; a failed job's error with its own status."""
        record = known(ident)
        await jobs.result(record, wait)
        if record.status in (Status.SUCCEEDED, Status.INTERRUPTED):
            return {"created": int(record.created), "data": [{"b64_json": image} for image in record.images],
                    "sdcpu": record.info}
        if record.status is Status.FAILED:
            return JSONResponse(record.error, status_code=record.error_status)
        raise NotFinished(f"job {ident} was cancelled" if record.status is Status.CANCELLED else
                          f"job {ident} has not finished: ask again later, or with ?wait=SECONDS")

    @routes.post("/{ident}/cancel")
    async def cancel(ident: schemas.Name):
        """Cancel the job (a finished one is left as it is): its status after."""
        record = known(ident)
        jobs.cancel(record)
        return await jobs.status(ident, record, False)

    def known(ident: str) -> Record:
        record = jobs.get(ident)
        if record is None:
            raise missing(ident)
        return record

    def missing(ident: str) -> NotFound:
        return NotFound(f"no job {ident!r}: never submitted, or finished more than {jobs.keep_seconds:g} s ago "
                        "(serve --job-seconds)")

    return routes

