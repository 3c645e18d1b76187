"""The HTTP service: OpenAI's and AUTOMATIC1111's image APIs (their routes in openai_routes.py and a1111_routes.py),
/health, /metrics and the page at `/`, on FastAPI.

Every error is JSON `{"error": {"message": ..., "type": ...}}` (OpenAI's shape, for both APIs) with a 4xx status for
bad input or a Host the server does not answer to (400), a missing or wrong key (401), a browser's request from a page
of another site (403), an unknown path (404), a force_task_id naming a job in flight (409), a body too large (413);
503 with Retry-After when the queue is full, the model is not ready or --max-uploads uploads are being read
(serve/uploads.py); 504 when a call runs past --max-request-seconds; 503 when the server shuts down and its drain time
is over (queue.Worker.drain); 499 with type and code `interrupted` when an OpenAI request is interrupted by its own
caller (A1111's answer 200 with what was made, as A1111 does); 500 (a short message and an id, the details in the log)
when a generation fails or a route breaks. The server keeps serving after any of them. A client that disconnects
before its answer cancels its job (queue.Worker.cancel), counted as status 499.
With an API key, /v1/*, /sdapi/*, /internal/*, /controlnet/* and /metrics need `Authorization: Bearer KEY`
(serve/guard.py checks it, the Host and the body's size before a route reads the body); / and /health stay open,
/health saying only ready or not.
A browser's request from a page of another origin is refused 403 on every method but GET and HEAD (serve/guard.py),
unless its origin is one of `origins` (serve --allow-origin), which get CORS (Starlette's CORSMiddleware). The page at
/ is served with a Content-Security-Policy allowing only its own inline script and style (by their hashes), its
fetches to this server and data: images, and may not be framed.
/docs, /redoc and /openapi.json (Swagger UI loads its script from a CDN) are served only with `docs`.
"""

import asyncio
import base64
import contextlib
import hashlib
import io
import math
import os
import re
from concurrent.futures import Future
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException

from sdcpu.errors import Skip, UsageError
from sdcpu.models.loras import Folder
from sdcpu.pipeline import generate, outputs
from sdcpu.serve import (a1111_controlnet, a1111_routes, failures, guard, job_routes, openai_routes, preview, schemas,
                         uploads)
from sdcpu.serve.calls import Done, Owner
from sdcpu.serve.failures import (ClientGone, GenerationFailed, Interrupted, NotReady, QueueFull, ShuttingDown,
                                  TimedOut)
from sdcpu.serve.jobs import Jobs
from sdcpu.serve.metrics import Metrics
from sdcpu.serve.queue import Worker


@dataclass(frozen=True)
class Settings:
    max_size: int = 1024
    key_digest: bytes | None = None  # the API key's options.key_digest (None: no key asked)
    lora_dir: str | None = None  # the LoRAs requests may name (serve --lora-dir)
    hosts: tuple[str, ...] = guard.LOOPBACK  # the Host names answered (serve --host, --allowed-host)
    docs: bool = False  # serve /docs, /redoc, /openapi.json (serve --docs)
    origins: tuple[str, ...] = ()  # scheme://host[:port] of other sites whose pages may use it (serve --allow-origin)
    max_uploads: int = 2  # uploads read and decoded at once (serve --max-uploads)
    jobs: bool = True  # take jobs (/v1/jobs): not on one of several processes sharing a port
    job_seconds: float = 600  # how long a finished job is kept (serve --job-seconds)


def create_app(worker: Worker, settings: Settings) -> FastAPI:
    metrics = Metrics(worker.depth)
    service = Service(worker, settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        await run_in_threadpool(worker.close)  # uvicorn has let every in-flight request finish by now

    docs = {} if settings.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="sdcpu serve", version="1", lifespan=lifespan, **docs)
    if settings.origins:  # inside the guard: it answers their preflights and marks the routes' answers
        app.add_middleware(CORSMiddleware, allow_origins=settings.origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(guard.Guard, key_digest=settings.key_digest, hosts=(*guard.LOOPBACK, *settings.hosts),
                       origins=settings.origins)
    app.middleware("http")(metrics.middleware())  # outside the guard: its refusals and 500s are counted
    _error_handlers(app, worker)
    app.include_router(openai_routes.router(service))
    app.include_router(a1111_routes.router(service))
    app.include_router(a1111_routes.internal(service))
    app.include_router(a1111_controlnet.router(service))
    app.include_router(job_routes.router(service, Jobs(service, settings.job_seconds), settings.jobs))

    @app.get("/health")
    async def health(request: Request):
        """200 once the model is loaded and warmed up, else 503 with what it is doing (or why it failed); with an API
        key, only ready or not unless the key is sent."""
        body = {"status": "ready" if worker.ready else "not ready"}
        if guard.authorized(request.headers, settings.key_digest):
            models = worker.models
            body |= {"state": worker.state, "model": models.default.name, "recipe": models.default.recipe,
                     "models": [model.describe() for model in models.all], "held_gib": round(models.held_gib(), 2),
                     "max_memory_gib": models.max_gib, "queue_depth": worker.depth(), "max_queue": worker.max_queue,
                     "pid": os.getpid()}  # which instance answered, under --instances
        return JSONResponse(body, status_code=200 if worker.ready else 503)

    @app.get("/metrics")
    async def prometheus():
        content, media_type = metrics.render()
        return Response(content, media_type=media_type)

    html = (resources.files("sdcpu.serve") / "page.html").read_text()
    page_headers = {"Content-Security-Policy": page_policy(html), "X-Frame-Options": "DENY"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(html, headers=page_headers)

    return app


def page_policy(html: str) -> str:
    """The Content-Security-Policy the page HTML works under and needs no more than: its own inline scripts and styles
    (by their SHA-256), fetches to this server, data: images, no frame around it, no other form target or base."""

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()}'"
                        for block in blocks)

    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; img-src data:; "
            "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


class Service:
    """What the routes of both APIs share: the worker, the settings, the metrics, the request bounds, the previews."""

    def __init__(self, worker: Worker, settings: Settings, metrics: Metrics):
        self.worker, self.settings, self.metrics = worker, settings, metrics
        self.lora_folder = Folder(settings.lora_dir) if settings.lora_dir else None  # serve --lora-dir
        self.previews = preview.Shared(self.preview_png)  # the progress routes' previews
        self.uploads = uploads.Uploads(settings.max_uploads)
        self.a1111_model = worker.models.default.name  # A1111's sd_model_checkpoint (POST /sdapi/v1/options sets it)
        self._limits: dict[str, schemas.Limits] = {}

    def limits(self, model: str | None = None) -> schemas.Limits:
        """The bounds of a request for MODEL (None: the default; a name not served: BadRequest), made once the models
        are prepared (they need each one's tokenizer and its recipe's defaults)."""
        if not self.worker.ready:
            raise NotReady(self.worker.state)
        served = self.worker.models.find(model)
        if served.name not in self._limits:
            facts = served.facts
            self._limits[served.name] = schemas.Limits(self.settings.max_size, facts.defaults, facts.tokenizer,
                                                       self.lora_folder, served.name, facts.scheduler, facts.family,
                                                       facts.control)
        return self._limits[served.name]

    def preview_png(self, latents, width: int, height: int) -> str:
        """The first image of LATENTS (a step's) as a base64 PNG of WIDTHxHEIGHT, decoded cheaply (sdcpu.serve.preview);
        blocking: call it in a thread."""
        image = preview.previewer(self.worker.pipe).images(latents[:1], width, height)[0]
        out = io.BytesIO()
        image.save(out, format="PNG")
        return base64.b64encode(out.getvalue()).decode()

    async def preview_of(self, running, mine) -> preview.Shown | None:
        """The shared preview of the job MINE (Running.mine's) of RUNNING; None before its first step."""
        if running.latest is None:
            return None
        first, job, _ = mine
        step, latents = running.latest
        return await run_in_threadpool(self.previews.shown, running, first, step, latents, job.request.width,
                                       job.request.height)

    def submit(self, job: schemas.Job, sender: Owner) -> Future:
        return self.worker.submit(job, sender)  # NotReady, QueueFull: 503 at once

    async def answer(self, job: schemas.Job, future: Future, request: Request | None,
                     partial: bool = True) -> tuple[list[str], dict]:
        """The base64 PNGs of a submitted JOB and its info, once made; ClientGone (the job cancelled) if REQUEST's
        client disconnects first (None: a stream, whose response notices the disconnect and cancels the job). An
        interrupted job's images when PARTIAL (A1111's way), else Interrupted."""
        try:
            done: Done = await self._unless_gone(future, request)
        except (UsageError, Skip) as error:  # the request's LoRAs cannot load or apply here: 400, not a server fault
            raise schemas.BadRequest(str(error)) from None
        except (TimedOut, ShuttingDown, ClientGone):
            raise
        except Exception as error:  # noqa: BLE001 - answered 500, the server goes on
            raise GenerationFailed(guard.incident("generation failed", error)) from error
        if done.interrupted and not partial:
            raise Interrupted(f"interrupted by /sdapi/v1/interrupt after {done.steps_done} of {job.steps_run} steps")
        self.metrics.images.inc(len(done.images))
        model = self.worker.models.find(job.model)
        info = _info(job, done, model)
        encoded = await run_in_threadpool(_encode, done, job, model, info)
        info["infotexts"] = [text for _, text in encoded]  # each PNG's parameters chunk (A1111's infotexts)
        return [image for image, _ in encoded], info

    async def run(self, job: schemas.Job, request: Request, sender: Owner, partial: bool = True
                  ) -> tuple[list[str], dict]:
        return await self.answer(job, self.submit(job, sender), request, partial)

    async def _unless_gone(self, future: Future, request: Request | None) -> Done:
        """FUTURE's result, unless REQUEST's client disconnects first: then its job is cancelled, ClientGone (None: not
        watched)."""
        made = asyncio.wrap_future(future)
        if request is None:
            return await made
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({made, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not made.done():
            self.worker.cancel(future)
            made.cancel()
            raise ClientGone("the client disconnected before its answer")
        return made.result()


async def _disconnected(request: Request) -> None:
    """Return once the client of REQUEST (its body read) has disconnected."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _info(job: schemas.Job, done: Done, model) -> dict:
    r, edit = job.request, job.edit
    return {"model": model.name, "prompt": r.prompt, "negative_prompt": r.negative_prompt, "seed": r.seed,
            "all_seeds": r.seeds(),
            "steps": r.steps, "cfg_scale": r.guidance, "width": r.width, "height": r.height,
            "sampler_name": job.scheduler or model.facts.scheduler, "seconds": round(done.seconds, 3),
            "batch_images": done.batch_images, "task": edit.task if edit else "txt2img",
            "denoising_strength": edit.strength if edit else (job.hires.strength if job.hires else None),
            "hires": None if job.hires is None else {"width": job.hires.width, "height": job.hires.height,
                                                     "upscaler": job.hires.upscaler, "steps": job.hires.steps},
            "steps_done": done.steps_done,
            "loras": [{"name": item.name, "weight": item.weight} for item in job.loras],
            "control": job.control and job.control.text(),
            "interrupted": done.interrupted}


def _encode(done: Done, job: schemas.Job, model, info: dict) -> list[tuple[str, str]]:
    """Base64 PNGs of MODEL's (a served.Model), each with its `parameters` chunk (as `sdcpu generate` writes them),
    and that chunk."""
    out = []
    for image, seed in zip(done.images, job.request.seeds()):
        text = outputs.parameters_text(job.request, seed, model=model.name, random_weights=model.random_weights,
                                       scheduler=info["sampler_name"], recipe=model.recipe, edit=job.edit,
                                       loras=job.loras, hires=job.hires, control=job.control)
        out.append((base64.b64encode(outputs.encode_png(image, text)).decode(), text))
    return out


def _error(status: int, message: str, kind: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)


def _error_handlers(app: FastAPI, worker: Worker) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        first = exc.errors()[0]
        if tuple(first["loc"]) == ("body",) and first["type"] != "json_invalid":
            return _error(400, "the body must be a JSON object, sent as Content-Type: application/json",
                          "invalid_request_error")
        return _error(400, schemas.validation_message(exc.errors()), "invalid_request_error")

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail), "invalid_request_error" if exc.status_code < 500 else
                      "server_error", exc.headers)

    @app.exception_handler(QueueFull)
    async def queue_full(request, exc):
        retry = max(1, math.ceil(worker.last_seconds))
        return _error(503, f"server busy: {exc}; retry later", "server_busy", {"Retry-After": str(retry)})

    @app.exception_handler(NotReady)
    async def not_ready(request, exc):
        return _error(503, f"not ready: {exc}", "server_not_ready", {"Retry-After": "5"})

    async def failed(request, exc):
        failure = failures.of(exc)
        return JSONResponse(failure.body(exc), status_code=failure.status, headers=failure.headers)

    for kind in failures.FAILURES:
        app.exception_handler(kind)(failed)
