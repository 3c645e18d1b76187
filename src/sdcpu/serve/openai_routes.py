"""OpenAI's images API: /v1/images/generations (JSON) and /v1/images/edits (a multipart form), each answered whole or,
with `stream: true`, as OpenAI's Server-Sent Events: `partial_images` (0-3) previews spread over the steps
(`image_generation.partial_image`, for edits `image_edit.partial_image`), then the image (`*.completed`).

A request its own caller interrupts (/sdapi/v1/interrupt from its peer address: an OpenAI request names no task id) is
never answered as made: 499 with an error of type and code `interrupted`, or, streamed, an `error` event of that type
in place of `*.completed`.

An edits form is read in memory, never spooled to disk; serve/guard.py stops reading it past guard.FORM_BYTES (an
image and a mask of tasks.MAX_INPUT_BYTES each, and the text fields).
"""

import asyncio
import json
import time
from dataclasses import replace

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartException, MultiPartParser

from sdcpu.pipeline import tasks
from sdcpu.serve import failures, schemas
from sdcpu.serve.guard import FORM_BYTES
from sdcpu.serve.failures import GenerationFailed, Interrupted, ShuttingDown, TimedOut
from sdcpu.serve.calls import Owner


def router(service) -> APIRouter:
    routes = APIRouter()

    @routes.post("/v1/images/generations")
    async def generations(body: schemas.OpenAIImageRequest, request: Request):
        """OpenAI's image generation; `steps`, `seed`, `negative_prompt` and `guidance` are sdcpu's extra fields."""
        return await _answer(service, request, body, schemas.from_openai(body, service.limits(body.model)),
                             "image_generation")

    @routes.post("/v1/images/edits")
    async def edits(request: Request):
        """OpenAI's image edit (a form: `image` and `mask` files, alpha 0 of the mask = the area to edit; the fields of
        generations and sdcpu's `strength`): img2img without a mask, inpainting with one; several `image[]` files are
        a reference edit (FLUX.2 klein)."""
        body, edit = await edit_form(service, request)
        return await _answer(service, request, body, schemas.from_openai(body, service.limits(body.model), edit),
                             "image_edit")

    @routes.get("/v1/models")
    async def models():
        """OpenAI's model list: the models served (serve --model), the default first."""
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": 0, "owned_by": "sdcpu"}
                                           for model in service.worker.models.all]}

    return routes


async def edit_form(service, request: Request) -> tuple:
    """The edits form of REQUEST, checked, and its edit, decoded off the event loop: an upload SERVICE admits first
    (serve/uploads.py)."""
    async with service.uploads.admitted(service.worker, service.limits):
        return await _edit_form(request)


async def _edit_form(request: Request) -> tuple:
    fields, files = await _form(request)
    images, masks = files.pop("image", []) + files.pop("image[]", []), files.pop("mask", [])
    if files:
        raise schemas.BadRequest(f"{next(iter(files))}: Extra inputs are not permitted (a file edits does not take)")
    if texts := [name for name in ("image", "image[]", "mask") if name in fields]:
        raise schemas.BadRequest(f"{texts[0]}: send it as a file")
    if not images:
        raise schemas.BadRequest("image: Field required (a file)")
    if len(masks) > 1:
        raise schemas.BadRequest(f"mask: one file, got {len(masks)}")
    try:
        body = schemas.OpenAIEditForm.model_validate(fields)
    except ValidationError as err:
        raise RequestValidationError(err.errors()) from None
    mask = await masks[0].read() if masks else None
    sent = [await image.read() for image in images[:tasks.MAX_REFERENCES + 1]]  # one more than taken: refused
    return body, await run_in_threadpool(schemas.openai_edit, sent, mask, body.strength)


async def _answer(service, request: Request, body, job: schemas.Job, event_prefix: str):
    if not body.stream:
        images, info = await service.run(job, request, Owner.of(request), partial=False)
        return {"created": int(time.time()), "data": [{"b64_json": image} for image in images], "sdcpu": info}
    return await _stream(service, job, request, body.partial_images, event_prefix)


async def _stream(service, job: schemas.Job, request: Request, partial_images: int,
                  event_prefix: str) -> StreamingResponse:
    """The job's previews after PARTIAL_IMAGES steps spread over its steps, then its image, as OpenAI's events."""
    loop, previews = asyncio.get_running_loop(), asyncio.Queue()
    r = job.request

    def on_step(index, steps_run, step_latents):  # on the worker thread
        # decoded here, between two steps: beside the running UNet, the decode and the UNet fought for the same cores
        # (random:sd15 at 512, 10 steps, 3 previews: the first after step 2 at 24.1 s, the image 87.9 s, where the
        # unstreamed request took 78.4 s and TAESD alone decodes in 1.1 s)
        if index + 1 in _partial_steps(steps_run, partial_images):
            loop.call_soon_threadsafe(previews.put_nowait, service.preview_png(step_latents, r.width, r.height))

    job = replace(job, on_step=on_step)
    future = service.submit(job, Owner.of(request))  # a full queue or a model not ready: 503 now, before the stream
    future.add_done_callback(lambda _: loop.call_soon_threadsafe(previews.put_nowait, None))
    tokens = len(service.limits(job.model).tokenizer(r.prompt).input_ids)
    common = {"created_at": int(time.time()), "size": f"{r.width}x{r.height}", "quality": "auto",
              "background": "opaque", "output_format": "png"}

    async def events():
        try:
            index = 0
            while (image := await previews.get()) is not None:
                yield _event(f"{event_prefix}.partial_image", {**common, "b64_json": image, "partial_image_index": index})
                index += 1
            images, info = await service.answer(job, future, None, partial=False)
        except (GenerationFailed, TimedOut, ShuttingDown, Interrupted, schemas.BadRequest) as error:  # after a 200
            yield _event("error", failures.of(error).body(error))  # began: an error event ends it
            return
        finally:  # the client gone (the response cancels this generator) or done: a job still on cancels
            service.worker.cancel(future)
        usage = {"input_tokens": tokens, "input_tokens_details": {"image_tokens": 0, "text_tokens": tokens},
                 "output_tokens": 0, "total_tokens": tokens}  # sdcpu counts no image tokens: CLIP's text tokens
        yield _event(f"{event_prefix}.completed", {**common, "b64_json": images[0], "usage": usage, "sdcpu": info})

    return StreamingResponse(events(), media_type="text/event-stream")


def _partial_steps(steps: int, partial_images: int) -> set[int]:
    """After which steps (1-based) the partial images are sent: evenly spread, none at the start or the end (the end
    is the completed image), so a call of few steps sends fewer (as OpenAI allows)."""
    return {round(steps * (i + 1) / (partial_images + 1)) for i in range(partial_images)} - {0, steps}


def _event(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"


class _InMemory(MultiPartParser):
    spool_max_size = FORM_BYTES  # a file part stays in memory up to this: the guard bounds the whole form by it


async def _form(request: Request) -> tuple[dict[str, str], dict[str, list]]:
    """The edits form, read in memory: (its text fields, its files by field name)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise schemas.BadRequest("send the edit as multipart/form-data (the image and the mask as files)")
    try:
        # the images (up to a reference edit's), the mask, and one more: a count refused with its own message
        form = await _InMemory(request.headers, request.stream(), max_files=tasks.MAX_REFERENCES + 2,
                               max_fields=32).parse()
    except MultiPartException as err:
        raise schemas.BadRequest(f"the form: {err.message}") from None
    fields, files = {}, {}
    for name, value in form.multi_items():
        if isinstance(value, str):
            if name in fields:
                raise schemas.BadRequest(f"{name}: given more than once")
            fields[name] = value
        else:
            files.setdefault(name, []).append(value)
    return fields, files
