"""AUTOMATIC1111's API, as its clients use it: txt2img and img2img (their fields: a1111_fields.py), progress, interrupt,
and the listings clients read before they generate (models, samplers, schedulers, options, upscalers, LoRAs, scripts,
command-line flags), in A1111's shapes with what sdcpu has.

Progress and interrupt reach only the caller's own job (queue.Owner.matches): the one whose `force_task_id` it names
(`id_task`), or, naming none, a job its peer address sent without a task id. /sdapi/v1/progress reads the call running:
its step and an ETA from the time per step so far, and (unless skip_current_image) the preview of the caller's own job
only, shared by its pollers (preview.Shared). POST /internal/progress is A1111's progress of one task id (running,
queued and its place, or finished; its preview unless the client has it, `id_live_preview` being the preview's step).
/sdapi/v1/interrupt (optionally `{"id_task": ...}`) stops the caller's jobs at the next step; they are answered with
the images of the latents they have (as A1111 does), their info saying `interrupted`. Requests waiting are not
affected.
"""

import json
import time

from fastapi import APIRouter, Request

from sdcpu.pipeline import hires
from sdcpu.serve import a1111_fields, schemas, uploads
from sdcpu.serve.calls import Owner, TaskState


class TaskRequest(schemas.Strict):
    """/sdapi/v1/interrupt's optional body: the task id (a request's force_task_id) of the job to stop."""

    id_task: schemas.Name | None = None


class ProgressRequest(TaskRequest):
    """A1111's /internal/progress body: the task id, the preview the client has (its id), whether to send one."""

    id_live_preview: int = -1
    live_preview: bool = True

def router(service) -> APIRouter:
    routes = APIRouter(prefix="/sdapi/v1")
    worker = service.worker

    def limits(body) -> schemas.Limits:
        """The limits of the model BODY asks for: override_settings' sd_model_checkpoint, else the server's A1111
        model (POST /sdapi/v1/options)."""
        named = (body.override_settings or {}).get("sd_model_checkpoint")
        return service.limits(named if isinstance(named, str) else service.a1111_model)

    @routes.post("/txt2img")
    async def txt2img(body: a1111_fields.A1111Txt2ImgRequest, request: Request):
        """AUTOMATIC1111's txt2img: `images` (base64 PNGs), `parameters` (the request, every field), `info` (a JSON
        string with A1111's keys and sdcpu's)."""
        return await _generate(request, body, a1111_fields.from_a1111(body, limits(body)), body.model_dump())

    @routes.post("/img2img", openapi_extra=schemas.json_body(a1111_fields.A1111Img2ImgRequest))
    async def img2img(request: Request):
        """AUTOMATIC1111's img2img and inpainting (with `mask`: white = repaint); txt2img's fields and answer. An
        upload (serve/uploads.py): admitted before it is read, parsed and decoded off the event loop."""
        async with service.uploads.admitted(worker, service.limits):
            body, edit = await uploads.parsed(request, _img2img)
        inputs = set() if body.include_init_images else {"init_images", "mask"}  # not echoed back unless asked
        return await _generate(request, body, a1111_fields.from_a1111(body, limits(body), edit), body.model_dump(
            exclude=inputs))

    async def _generate(request: Request, body, jobs: list, parameters: dict) -> dict:
        """JOBS (n_iter of them) one after another; an interrupt stops the iterations left, as in A1111."""
        images, infos, sender = [], [], Owner.of(request, body.force_task_id)
        for job in jobs:
            made, info = await service.run(job, request, sender)
            images += made
            infos.append(info)
            if info["interrupted"]:
                break
        info = _a1111_info(body, infos)
        return {"images": images if body.send_images else [], "parameters": parameters, "info": json.dumps(info)}

    @routes.get("/progress")
    async def progress(request: Request, skip_current_image: bool = False):
        """The call running (its step, ETA, job kind), with a preview only of the caller's own job (one its peer
        address sent without a task id): never another client's image."""
        running = worker.running
        if running is None:
            return {"progress": 0.0, "eta_relative": 0.0, "state": _state("", 0, 0, 0, False), "current_image": None,
                    "textinfo": None}
        job, mine = running.jobs[0], running.mine(Owner.of(request))
        task = job.edit.task if job.edit else "txt2img"
        done, eta = running.progress()
        shown = None if skip_current_image or mine is None else await service.preview_of(running, mine)
        interrupted = mine is not None and mine[2] in running.halted
        return {"progress": done, "eta_relative": eta or 0.0,
                "state": _state(task, 1, running.step, running.steps, interrupted),
                "current_image": shown and shown.png, "textinfo": f"{task}: step {running.step} of {running.steps}"}

    @routes.post("/interrupt")
    async def interrupt(request: Request, body: TaskRequest | None = None):
        """Stop the caller's own jobs in the call running (queue.Owner.matches: the task id of the body, else the jobs
        its peer address sent without one) at the next step; `interrupted` false when it has none running."""
        return {"interrupted": worker.interrupt(Owner.of(request, body and body.id_task))}

    routes.include_router(_listings(service))
    return routes


def internal(service) -> APIRouter:
    """A1111's /internal/progress: the progress of one task id (a request's force_task_id)."""
    routes, worker = APIRouter(prefix="/internal"), service.worker

    @routes.post("/progress")
    async def task_progress(body: ProgressRequest):
        """A1111's ProgressResponse of BODY's task: active, queued (textinfo its place) or completed; while active,
        its progress, ETA and preview (unless the client has that step's: id_live_preview)."""
        state = worker.task(body.id_task) if body.id_task is not None else TaskState()
        running = worker.running
        mine = running.mine(Owner(None, body.id_task)) if state.active and running is not None else None
        answer = {"active": mine is not None, "queued": state.queued, "completed": state.completed, "progress": None,
                  "eta": None, "live_preview": None, "id_live_preview": -1,
                  "textinfo": f"In queue: {state.place}/{state.waiting}" if state.queued else "Waiting..."}
        if mine is None:
            return answer
        done, eta = running.progress()
        answer |= {"progress": done, "eta": eta, "id_live_preview": body.id_live_preview,
                   "textinfo": f"step {running.step} of {running.steps}"}
        shown = await service.preview_of(running, mine) if body.live_preview else None
        if shown is not None and shown.step != body.id_live_preview:
            answer |= {"live_preview": f"data:image/png;base64,{shown.png}", "id_live_preview": shown.step}
        return answer

    return routes


def _img2img(data: bytes) -> tuple:
    """img2img's body (DATA, JSON) and its edit, checked and decoded."""
    body = schemas.parse_json(a1111_fields.A1111Img2ImgRequest, data)
    return body, a1111_fields.a1111_edit(body)


def _listings(service) -> APIRouter:
    """What A1111's clients read before they generate, in A1111's shapes with what sdcpu has."""
    routes, models = APIRouter(), service.worker.models

    @routes.get("/sd-models")
    async def sd_models():
        """The models served, the default first (hashing a checkpoint's gigabytes is not done: hash null)."""
        return [{"title": model.name, "model_name": model.name, "hash": None, "sha256": None, "filename": model.name,
                 "config": None} for model in models.all]

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
        """A1111's plain resizes (hires fix's image upscalers; no model upscaler, no extras tab)."""
        return [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4.0 if name != "None"
                 else 1.0} for name in hires.IMAGE]

    @routes.get("/latent-upscale-modes")
    async def latent_upscale_modes():
        """Hires fix's latent upscalers."""
        return [{"name": name} for name in hires.LATENT]

    @routes.get("/scripts")
    async def scripts():
        """The always-on scripts served (clients read this to know which extensions to send arguments to): ControlNet
        (serve/a1111_controlnet.py)."""
        return {"txt2img": ["controlnet"], "img2img": ["controlnet"]}

    @routes.get("/cmd-flags")
    async def cmd_flags():
        """The few of A1111's command-line flags that describe this server (an API-only server on the CPU)."""
        return {"api": True, "nowebui": True, "ckpt": models.default.name, "use_cpu": ["all"], "skip_torch_cuda_test": True,
                "lora_dir": None}

    @routes.get("/loras")
    async def loras():
        """The LoRAs of --lora-dir, as A1111 lists them (a prompt names one as <lora:name:weight>); `path` is the file's
        name only: the server's folders are not shown."""
        names = service.lora_folder.names() if service.lora_folder else []
        return [{"name": name, "alias": name, "path": f"{name}.safetensors", "metadata": {}} for name in names]

    @routes.get("/options")
    async def options():
        return {"sd_model_checkpoint": service.a1111_model, "sd_checkpoint_hash": None, **a1111_fields.SHOWN_OPTIONS}

    @routes.post("/options")
    async def set_options(body: a1111_fields.A1111Options):
        """Only sd_model_checkpoint, to a model served: the one A1111 requests naming none get from now on, for every
        client (A1111's own options are the server's, not a client's)."""
        if body.sd_model_checkpoint is None:
            return None
        names = [model.name for model in models.all]
        if body.sd_model_checkpoint not in names:
            raise schemas.BadRequest(f"sd_model_checkpoint {body.sd_model_checkpoint!r}: this server serves "
                                     + ", ".join(map(repr, names)) + " (serve --model A --model B serves several)")
        service.a1111_model = body.sd_model_checkpoint
        return None

    return routes


def _state(job: str, count: int, step: int, steps: int, interrupted: bool) -> dict:
    return {"skipped": False, "interrupted": interrupted, "job": job, "job_count": count, "job_no": 0,
            "sampling_step": step, "sampling_steps": steps}


def _a1111_info(body, infos: list[dict]) -> dict:
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
        "restore_faces": False, "face_restoration_model": None, "sd_model_name": first["model"], "sd_model_hash": None,
        "sd_vae_name": None, "sd_vae_hash": None, "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": first["denoising_strength"] or body.denoising_strength, "extra_generation_params": {},
        "index_of_first_image": 0, "infotexts": [text for info in infos for text in info["infotexts"]],
        "styles": [], "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": 1,
        "is_using_inpainting_conditioning": False, "version": "sdcpu",
    }
