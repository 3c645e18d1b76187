"""AUTOMATIC1111's API, as its clients use it: txt2img and img2img (their fields: a1111_fields.py), progress, interrupt,
and the listings clients read before they generate (models, samplers, schedulers, options, upscalers, LoRAs, scripts,
command-line flags), in A1111's shapes with what sdcpu has.

/sdapi/v1/progress reads the call running: its step, an ETA from the time per step so far, and (unless
skip_current_image) a preview of its first image decoded cheaply from the latest latents. /sdapi/v1/interrupt stops
that call at its next step; its requests are answered with the images of the latents it has (as A1111 does), their
info saying `interrupted`. Requests waiting are not affected.
"""

import json
import time

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from sdcpu.serve import a1111_fields, schemas

def router(service) -> APIRouter:
    routes = APIRouter(prefix="/sdapi/v1")
    worker, model = service.worker, service.settings.model

    @routes.post("/txt2img")
    async def txt2img(body: a1111_fields.A1111Txt2ImgRequest, request: Request):
        """AUTOMATIC1111's txt2img: `images` (base64 PNGs), `parameters` (the request, every field), `info` (a JSON
        string with A1111's keys and sdcpu's)."""
        return await _generate(request, body, a1111_fields.from_a1111(body, service.limits()), body.model_dump())

    @routes.post("/img2img")
    async def img2img(body: a1111_fields.A1111Img2ImgRequest, request: Request):
        """AUTOMATIC1111's img2img and inpainting (with `mask`: white = repaint); txt2img's fields and answer."""
        edit = await run_in_threadpool(a1111_fields.a1111_edit, body)
        inputs = set() if body.include_init_images else {"init_images", "mask"}  # not echoed back unless asked
        return await _generate(request, body, a1111_fields.from_a1111(body, service.limits(), edit), body.model_dump(
            exclude=inputs))

    async def _generate(request: Request, body, jobs: list, parameters: dict) -> dict:
        """JOBS (n_iter of them) one after another; an interrupt stops the iterations left, as in A1111."""
        images, infos = [], []
        for job in jobs:
            made, info = await service.run(job, request)
            images += made
            infos.append(info)
            if info["interrupted"]:
                break
        info = _a1111_info(body, infos, model)
        return {"images": images if body.send_images else [], "parameters": parameters, "info": json.dumps(info)}

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

    routes.include_router(_listings(service))
    return routes


def _listings(service) -> APIRouter:
    """What A1111's clients read before they generate, in A1111's shapes with what sdcpu has."""
    routes, model = APIRouter(), service.settings.model

    @routes.get("/sd-models")
    async def sd_models():
        """The one model loaded (sdcpu serves one; hashing a checkpoint's gigabytes is not done: hash null)."""
        return [{"title": model, "model_name": model, "hash": None, "sha256": None, "filename": model,
                 "config": None}]

    @routes.get("/samplers")
    async def samplers():
        return [{"name": name, "aliases": [scheduler], "options": {}} for name, scheduler in a1111_fields.SAMPLERS.items()]

    @routes.get("/schedulers")
    async def schedules():
        """A1111's noise schedules sdcpu serves (the `scheduler` field): Automatic, the sampler's own; Karras."""
        return [{"name": label.lower(), "label": label, "aliases": None, "default_rho": 7.0 if label == "Karras" else
                 -1.0, "need_inner_model": False} for label in a1111_fields.SCHEDULES]

    @routes.get("/upscalers")
    async def upscalers():
        """A1111's "None" upscaler only: sdcpu upscales nothing (hires fix and the extras tab are not served)."""
        return [{"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 1.0}]

    @routes.get("/latent-upscale-modes")
    async def latent_upscale_modes():
        return []

    @routes.get("/scripts")
    async def scripts():
        """No scripts: clients read this to know which extensions (ControlNet, ADetailer...) to send arguments to."""
        return {"txt2img": [], "img2img": []}

    @routes.get("/cmd-flags")
    async def cmd_flags():
        """The few of A1111's command-line flags that describe this server (an API-only server on the CPU)."""
        return {"api": True, "nowebui": True, "ckpt": model, "use_cpu": ["all"], "skip_torch_cuda_test": True,
                "lora_dir": None}

    @routes.get("/loras")
    async def loras():
        """The LoRAs of --lora-dir, as A1111 lists them (a prompt names one as <lora:name:weight>); `path` is the file's
        name only: the server's folders are not shown."""
        names = service.lora_folder.names() if service.lora_folder else []
        return [{"name": name, "alias": name, "path": f"{name}.safetensors", "metadata": {}} for name in names]

    @routes.get("/options")
    async def options():
        return {"sd_model_checkpoint": model, "sd_checkpoint_hash": None, **a1111_fields.SHOWN_OPTIONS}

    @routes.post("/options")
    async def set_options(body: a1111_fields.A1111Options):
        """Only sd_model_checkpoint, and only to the model loaded: sdcpu serves one model per process."""
        if body.sd_model_checkpoint not in (None, model):
            raise schemas.BadRequest(f"sd_model_checkpoint {body.sd_model_checkpoint!r}: this server runs {model!r} "
                                     "only (start another sdcpu serve for another model)")
        return None

    return routes


def _state(job: str, count: int, step: int, steps: int, interrupted: bool) -> dict:
    return {"skipped": False, "interrupted": interrupted, "job": job, "job_count": count, "job_no": 0,
            "sampling_step": step, "sampling_steps": steps}


def _a1111_info(body, infos: list[dict], model: str) -> dict:
    """A1111's `info` of INFOS (one per n_iter; app._info's), with sdcpu's own keys beside A1111's."""
    first, seeds = infos[0], [seed for info in infos for seed in info["all_seeds"]]
    count = len(seeds)
    return {
        **first, "seconds": round(sum(info["seconds"] for info in infos), 3), "sdcpu_scheduler": first["sampler_name"],
        "interrupted": any(info["interrupted"] for info in infos),
        "prompt": body.prompt, "all_prompts": [body.prompt] * count, "negative_prompt": body.negative_prompt,
        "all_negative_prompts": [body.negative_prompt] * count, "seed": seeds[0], "all_seeds": seeds,
        "subseed": body.subseed, "all_subseeds": [body.subseed] * count, "subseed_strength": 0,
        "sampler_name": a1111_fields.sampler_label(first["sampler_name"]), "batch_size": body.batch_size,
        "restore_faces": False, "face_restoration_model": None, "sd_model_name": model, "sd_model_hash": None,
        "sd_vae_name": None, "sd_vae_hash": None, "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": first["denoising_strength"] or body.denoising_strength, "extra_generation_params": {},
        "index_of_first_image": 0, "infotexts": [text for info in infos for text in info["infotexts"]],
        "styles": [], "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": 1,
        "is_using_inpainting_conditioning": False, "version": "sdcpu",
    }
