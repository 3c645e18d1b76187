"""AUTOMATIC1111's API, as its clients use it: txt2img, img2img, progress, interrupt, the loaded model, samplers and
options.

/sdapi/v1/progress reads the call running: its step, an ETA from the time per step so far, and (unless
skip_current_image) a preview of its first image decoded cheaply from the latest latents. /sdapi/v1/interrupt stops
that call at its next step; its requests are answered with the images of the latents it has (as A1111 does), their
info saying `interrupted`. Requests waiting are not affected.
"""

import json
import time

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from sdcpu import lora
from sdcpu.serve import schemas

SHOWN_OPTIONS = {"samples_format": "png", "CLIP_stop_at_last_layers": 1}  # what clients read besides the checkpoint


def router(service) -> APIRouter:
    routes = APIRouter(prefix="/sdapi/v1")
    worker, model = service.worker, service.settings.model

    @routes.post("/txt2img")
    async def txt2img(body: schemas.A1111Txt2ImgRequest):
        """AUTOMATIC1111's txt2img: `images` (base64 PNGs), the `parameters` asked, `info` (a JSON string)."""
        images, info = await service.run(schemas.from_a1111(body, service.limits()))
        return {"images": images, "parameters": body.model_dump(), "info": json.dumps(info)}

    @routes.post("/img2img")
    async def img2img(body: schemas.A1111Img2ImgRequest):
        """AUTOMATIC1111's img2img and inpainting (with `mask`: white = repaint); txt2img's fields and answer."""
        edit = await run_in_threadpool(schemas.a1111_edit, body)
        images, info = await service.run(schemas.from_a1111(body, service.limits(), edit))
        parameters = body.model_dump(exclude={"init_images", "mask"})  # the inputs are not echoed back
        return {"images": images, "parameters": parameters, "info": json.dumps(info)}

    @routes.get("/progress")
    async def progress(skip_current_image: bool = False):
        running = worker.running
        if running is None:
            return {"progress": 0.0, "eta_relative": 0.0, "state": _state("", 0, 0, 0, False), "current_image": None,
                    "textinfo": None}
        job = running.jobs[0]
        task = job.edit.task if job.edit else "txt2img"
        done = running.step / running.steps
        elapsed = time.monotonic() - running.started
        image = None
        if not skip_current_image and running.latents is not None:
            image = await run_in_threadpool(service.preview_png, running.latents, job.request.width,
                                            job.request.height)
        return {"progress": done, "eta_relative": elapsed / done - elapsed if done else 0.0,
                "state": _state(task, 1, running.step, running.steps, running.interrupted), "current_image": image,
                "textinfo": f"{task}: step {running.step} of {running.steps}"}

    @routes.post("/interrupt")
    async def interrupt():
        """Stop the call running at its next step; `interrupted` false when none was running."""
        return {"interrupted": worker.interrupt()}

    @routes.get("/sd-models")
    async def sd_models():
        """The one model loaded (sdcpu serves one; hashing a checkpoint's gigabytes is not done: hash null)."""
        return [{"title": model, "model_name": model, "hash": None, "sha256": None, "filename": model,
                 "config": None}]

    @routes.get("/samplers")
    async def samplers():
        return [{"name": name, "aliases": [scheduler], "options": {}} for name, scheduler in schemas.SAMPLERS.items()]

    @routes.get("/loras")
    async def loras():
        """The LoRAs of --lora-dir, as A1111 lists them (a prompt names one as <lora:name:weight>); `path` is the file's
        name only: the server's folders are not shown."""
        folder = service.settings.lora_dir
        names = lora.Folder(folder).names() if folder else []
        return [{"name": name, "alias": name, "path": f"{name}.safetensors", "metadata": {}} for name in names]

    @routes.get("/options")
    async def options():
        return {"sd_model_checkpoint": model, "sd_checkpoint_hash": None, **SHOWN_OPTIONS}

    @routes.post("/options")
    async def set_options(body: schemas.A1111Options):
        """Only sd_model_checkpoint, and only to the model loaded: sdcpu serves one model per process."""
        if body.sd_model_checkpoint not in (None, model):
            raise schemas.BadRequest(f"sd_model_checkpoint {body.sd_model_checkpoint!r}: this server runs {model!r} "
                                     "only (start another sdcpu serve for another model)")
        return None

    return routes


def _state(job: str, count: int, step: int, steps: int, interrupted: bool) -> dict:
    return {"skipped": False, "interrupted": interrupted, "job": job, "job_count": count, "job_no": 0,
            "sampling_step": step, "sampling_steps": steps}
