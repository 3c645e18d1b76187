"""AUTOMATIC1111's txt2img and img2img requests: every field of A1111's own request models (modules/api/models.py,
built from modules/processing.py's StableDiffusionProcessingTxt2Img/Img2Img, v1.10), in one table.

A1111 clients send the whole model, every field at its default. Each field here is either honoured (sdcpu does what
it asks) or neutral-only: accepted at the values that ask for nothing (hires off, no script, no style...), which have
no effect, and refused with a 400 naming the field and value otherwise. A field that is not A1111's is refused too.
The request models are built from the table; `refusal` is its one check.
"""

import json
from dataclasses import dataclass, replace
from typing import Annotated, Any, Callable

from pydantic import BaseModel, Field, create_model

from sdcpu.pipeline import hires, tasks
from sdcpu.pipeline.generate import MAX_SIDE, Request
from sdcpu.serve import a1111_controlnet, schemas
from sdcpu.serve.schemas import BadRequest, Job, Limits, MAX_GUIDANCE, MAX_IMAGES, MAX_SEED, MAX_STEPS

# A1111 sampler names (and sdcpu's own scheduler names) -> sdcpu.models.schedulers names, for samplers diffusers has.
SAMPLERS = {
    "Euler": "euler", "Euler a": "euler-a", "Heun": "heun", "DDIM": "ddim", "PLMS": "pndm", "PNDM": "pndm",
    "DPM++ 2M": "dpm++", "DPM++ 2M Karras": "dpm++-karras", "UniPC": "unipc", "LCM": "lcm",
}
# A1111's noise schedules (`scheduler`, by label or lowercase name) -> {sampler's sdcpu name: sdcpu name with that
# schedule}; Automatic is each sampler's own. A1111's others (Uniform, Exponential, SGM Uniform, ...) are not served.
SCHEDULES = {"Automatic": {}, "Karras": {"dpm++": "dpm++-karras", "dpm++-karras": "dpm++-karras"}}
# The options /sdapi/v1/options shows besides the checkpoint: an override_settings entry equal to one asks for nothing.
SHOWN_OPTIONS = {"samples_format": "png", "CLIP_stop_at_last_layers": 1}
# The eta diffusers' samplers run with, for those that read one (A1111's eta_ancestral 1, and its DDIM's eta).
ETA_RUN = {"euler-a": 1.0, "ddim": 0.0}


@dataclass(frozen=True)
class Spec:
    type: Any  # A1111's declared type (with sdcpu's bounds where honoured)
    default: Any  # the value when absent: A1111's default, but for inpainting_fill and inpaint_full_res (see there)
    note: str  # honoured: what sdcpu does with it; neutral-only: what another value asks for
    # neutral-only: the values that ask for nothing, or accepts(value, body, scheduler) -> bool; None: honoured
    neutral: tuple | Callable | None = None


def honoured(type_, default, note):
    return Spec(type_, default, note)


def neutral(type_, default, accepted, note):
    return Spec(type_, default, note, accepted)


def _any(value, body, scheduler) -> bool:
    return True


def _eta(value, body, scheduler) -> bool:
    return value is None or value == ETA_RUN.get(scheduler, value)


def _without_mask(value, body, scheduler) -> bool:
    return body.mask is None or not value


def _fill(value, body, scheduler) -> bool:
    # without a mask nothing is filled; at strength 1 diffusers starts the masked latents from pure noise, so how the
    # area was filled before encoding is not seen; else only 1 ("original": the image itself, diffusers' way) is.
    return body.mask is None or body.denoising_strength == 1 or value == 1


OFF, NONE, EMPTY_LIST, EMPTY_DICT = (False, None), (None,), ([], None), ({}, None)
Text, Int, Float, Bool = schemas.Name | None, int | None, float | None, bool | None  # every string bounded

COMMON = {
    "prompt": honoured(schemas.Prompt, "", "the prompt; <lora:name:weight> tags name LoRAs of --lora-dir"),
    "negative_prompt": honoured(schemas.Prompt, "", "the negative prompt"),
    "styles": neutral(list[schemas.Name] | None, [], EMPTY_LIST, "saved prompt styles"),
    "seed": honoured(Annotated[int, Field(ge=-1, le=MAX_SEED)], -1, "image i uses seed+i; -1 a random seed"),
    "subseed": neutral(Int, -1, _any, "nothing: a subseed matters only with subseed_strength, which must be 0"),
    "subseed_strength": neutral(Float, 0, (0, None), "variation seeds"),
    "seed_resize_from_h": neutral(Int, -1, (-1, 0, None), "noise made at another size (seed resize)"),
    "seed_resize_from_w": neutral(Int, -1, (-1, 0, None), "noise made at another size (seed resize)"),
    "sampler_name": honoured(Text, None, "the sampler (SAMPLERS); none: the recipe's"),
    "sampler_index": honoured(Text, None, "older clients' sampler_name, used when sampler_name is absent"),
    "scheduler": honoured(Text, None, "the noise schedule: Automatic (the sampler's own) or Karras (DPM++ 2M)"),
    "batch_size": honoured(Annotated[int, Field(ge=1, le=MAX_IMAGES)], 1, "images per pipeline call"),
    "n_iter": honoured(Annotated[int, Field(ge=1, le=MAX_IMAGES)], 1, "pipeline calls, one after another"),
    "steps": honoured(Annotated[int, Field(ge=1, le=MAX_STEPS)], 20, "denoising steps"),
    "cfg_scale": honoured(Annotated[float, Field(ge=0, le=MAX_GUIDANCE)], 7.0, "the guidance scale"),
    "width": honoured(int, 512, "the image width"),
    "height": honoured(int, 512, "the image height"),
    "restore_faces": neutral(Bool, None, OFF, "face restoration"),
    "tiling": neutral(Bool, None, OFF, "tiling (seamless) images"),
    "do_not_save_samples": honoured(bool, False, "either value: sdcpu saves no images on the server"),
    "do_not_save_grid": honoured(bool, False, "either value: sdcpu saves no grids on the server"),
    "eta": neutral(Float, None, _eta, "an eta other than the sampler's (Euler a: 1, DDIM: 0)"),
    "s_min_uncond": neutral(Float, None, (0, None), "skipping the negative prompt at low sigmas (NGMS)"),
    "s_churn": neutral(Float, None, (0, None), "stochastic churn"),
    "s_tmax": neutral(Float, None, _any, "nothing: it bounds s_churn, which must be 0"),
    "s_tmin": neutral(Float, None, _any, "nothing: it bounds s_churn, which must be 0"),
    "s_noise": neutral(Float, None, (1, None), "scaled sampler noise"),
    "override_settings": honoured(dict[str, Any] | None, {}, "only sd_model_checkpoint as the served model, and "
                                  "options at the values /options shows"),
    "override_settings_restore_afterwards": honoured(Bool, True, "either value: no setting is ever changed"),
    "refiner_checkpoint": neutral(Text, None, (None, "", "None"), "a refiner model"),
    "refiner_switch_at": neutral(Float, None, _any, "nothing: it matters only with refiner_checkpoint"),
    "disable_extra_networks": honoured(Bool, False, "true: <lora:...> tags are taken out of the prompt, not applied"),
    "comments": neutral(dict[str, Any] | None, None, EMPTY_DICT, "comments written into the infotext"),
    "script_name": neutral(Text, None, (None, ""), "a script"),
    "script_args": neutral(list | None, [], EMPTY_LIST, "a script's arguments"),
    "send_images": honoured(bool, True, "false: the answer's images list is empty"),
    "save_images": neutral(Bool, False, OFF, "images saved on the server (sdcpu stores none)"),
    "alwayson_scripts": honoured(dict | None, {}, "controlnet only: one ControlNet unit (a1111_controlnet.py)"),
    "force_task_id": honoured(Text, None, "names the job: /internal/progress and /sdapi/v1/interrupt take it"),
    "infotext": neutral(Text, None, NONE, "parameters read from an infotext"),
}


def _first_pass(field: str, same: tuple):
    """A hires-fix field accepted where it asks for the first pass's own (SAME: the values A1111 reads so), or
    equal to the first pass's FIELD (A1111's page copies the prompt into hr_prompt), or without enable_hr."""
    return lambda value, body, scheduler: (not body.enable_hr or value in same
                                           or bool(field) and value == getattr(body, field))


Size = Annotated[int, Field(ge=0, le=MAX_SIDE)] | None
TXT2IMG = {
    **COMMON,
    "enable_hr": honoured(Bool, False, "true: hires fix, the image made at width x height, upscaled and denoised "
                          "again at its larger size (sdcpu.pipeline.hires)"),
    "denoising_strength": honoured(Annotated[float, Field(ge=0, le=1)] | None, 0,
                                   "hires fix's second-pass strength (0 or absent: A1111's 0.7)"),
    "hr_scale": honoured(Annotated[float, Field(ge=1, le=hires.MAX_SCALE)] | None, 2.0, "hires fix's upscale"),
    "hr_upscaler": honoured(Text, None, f"hires fix's upscaler: {', '.join(hires.UPSCALERS)} (absent: Latent)"),
    "hr_second_pass_steps": honoured(Annotated[int, Field(ge=0, le=MAX_STEPS)] | None, 0,
                                     "hires fix's second-pass steps (0: steps)"),
    "hr_resize_x": honoured(Size, 0, "hires fix's width instead of hr_scale (0: from hr_resize_y's aspect)"),
    "hr_resize_y": honoured(Size, 0, "hires fix's height instead of hr_scale (0: from hr_resize_x's aspect)"),
    "hr_checkpoint_name": neutral(Text, None, _first_pass("", (None, "", "Use same checkpoint")),
                                  "a second-pass model"),
    "hr_sampler_name": neutral(Text, None, _first_pass("sampler_name", (None, "", "Use same sampler")),
                               "a second-pass sampler"),
    "hr_scheduler": neutral(Text, None, _first_pass("scheduler", (None, "", "Use same scheduler")),
                            "a second-pass schedule"),
    "hr_prompt": neutral(schemas.Prompt | None, "", _first_pass("prompt", (None, "")), "a second-pass prompt"),
    "hr_negative_prompt": neutral(schemas.Prompt | None, "", _first_pass("negative_prompt", (None, "")),
                                  "a second-pass negative prompt"),
    "firstphase_width": neutral(Int, 0, (0, None), "a first pass at another size (old hires fix)"),
    "firstphase_height": neutral(Int, 0, (0, None), "a first pass at another size (old hires fix)"),
    "firstpass_image": neutral(Text, None, NONE, "a given first-pass image for hires fix"),
}
IMG2IMG = {
    **COMMON,
    "init_images": honoured(Annotated[list[str], Field(min_length=1, max_length=tasks.MAX_REFERENCES)], ...,
                            "the image (base64, a data: URL prefix allowed); a reference edit (FLUX.2 klein) takes "
                            f"up to {tasks.MAX_REFERENCES}"),
    "resize_mode": neutral(Int, 0, (0, None), "a resize mode other than 0 (a plain resize to width x height)"),
    "denoising_strength": honoured(Annotated[float, Field(gt=0, le=1)], 0.75,
                                   "the strength (not read by a reference edit, which has none: every client sends it)"),
    "image_cfg_scale": neutral(Float, None, _any, "nothing: it is read by InstructPix2Pix models only"),
    "mask": honoured(str | None, None, "inpainting's mask (base64; white = repaint)"),
    "mask_blur_x": honoured(Annotated[int, Field(ge=0, le=64)], 4, "the mask's horizontal blur, without mask_blur"),
    "mask_blur_y": honoured(Annotated[int, Field(ge=0, le=64)], 4, "the mask's vertical blur, without mask_blur"),
    "mask_blur": honoured(Annotated[int, Field(ge=0, le=64)] | None, 4, "the mask's Gaussian blur, both ways"),
    "mask_round": neutral(Bool, True, (True, None), "an unrounded latent mask (diffusers rounds it)"),
    # absent: sdcpu's 1 and false, what it does; A1111's defaults (0 and true, which full-model clients send) are
    # neutral without a mask, and refused with one where they would change the image
    "inpainting_fill": neutral(Int, 1, _fill, "masked content other than 1 ('original') under a mask at "
                               "denoising_strength below 1"),
    "inpaint_full_res": neutral(Bool, False, _without_mask, "inpainting a crop around the mask ('Only masked')"),
    "inpaint_full_res_padding": neutral(Int, 0, _any, "nothing: it matters only with inpaint_full_res"),
    "inpainting_mask_invert": honoured(Annotated[int, Field(ge=0, le=1)], 0, "1: the mask's black is repainted"),
    "initial_noise_multiplier": neutral(Float, None, (1, None), "scaled initial noise"),
    "latent_mask": neutral(Text, None, NONE, "a separate latent mask"),
    "include_init_images": honoured(bool, False, "true: parameters echo init_images and mask"),
}


def _model(name: str, table: dict) -> type[BaseModel]:
    return create_model(name, __base__=schemas.Strict, **{key: (spec.type, spec.default) for key, spec in table.items()})


A1111Txt2ImgRequest = _model("A1111Txt2ImgRequest", TXT2IMG)
A1111Img2ImgRequest = _model("A1111Img2ImgRequest", IMG2IMG)


def refusal(body: BaseModel, scheduler: str | None, model: str) -> str | None:
    """The one-line reason BODY asks for something sdcpu does not do, else None; SCHEDULER is the sdcpu scheduler it
    runs, MODEL the served model."""
    table = IMG2IMG if isinstance(body, A1111Img2ImgRequest) else TXT2IMG
    for name, spec in table.items():
        value, accepted = getattr(body, name), spec.neutral
        if accepted is not None and not (accepted(value, body, scheduler) if callable(accepted) else value in accepted):
            return f"{name} {json.dumps(value)}: asks for {spec.note}, which sdcpu does not do"
    for key, value in (body.override_settings or {}).items():
        if {"sd_model_checkpoint": model, **SHOWN_OPTIONS}.get(key, ...) != value:
            return (f"override_settings.{key} {json.dumps(value)}: sdcpu honours only sd_model_checkpoint {model!r} "
                    f"and {json.dumps(SHOWN_OPTIONS)}")
    return None


class A1111Options(schemas.Strict):
    sd_model_checkpoint: schemas.Name | None = None  # the only option set: to the model loaded


def sampler_label(scheduler: str | None) -> str | None:
    """The A1111 sampler name of an sdcpu scheduler name (its first in SAMPLERS), else the name itself."""
    return next((label for label, name in SAMPLERS.items() if name == scheduler), scheduler)


def _scheduler(body: BaseModel, limits: Limits) -> str | None:
    """The sdcpu scheduler BODY's sampler and schedule name (None: the recipe's own)."""
    sampler = body.sampler_name or body.sampler_index
    if sampler is not None and sampler not in SAMPLERS:
        raise BadRequest(f"sampler_name {sampler!r} is not served; choose from: {', '.join(SAMPLERS)}")
    name = SAMPLERS.get(sampler)
    if body.scheduler is None:
        return name
    label = next((label for label in SCHEDULES if body.scheduler in (label, label.lower())), None)
    if label is None:
        raise BadRequest(f"scheduler {body.scheduler!r} is not served; choose from: {', '.join(SCHEDULES)}")
    if not SCHEDULES[label]:
        return name
    schedule = SCHEDULES[label].get(name or limits.scheduler)
    if schedule is None:
        raise BadRequest(f"scheduler {body.scheduler!r} with sampler {sampler_label(name or limits.scheduler)!r}: "
                         f"{label} is served with {', '.join(map(sampler_label, SCHEDULES[label]))} only")
    return schedule


def from_a1111(body: BaseModel, limits: Limits, edit: tasks.Edit | None = None) -> list[Job]:
    """BODY's jobs, one per n_iter (each of batch_size images, seeds following on), or a BadRequest."""
    scheduler = _scheduler(body, limits)
    if reason := refusal(body, scheduler or limits.scheduler, limits.model):
        raise BadRequest(reason)
    if body.batch_size * body.n_iter > MAX_IMAGES:
        raise BadRequest(f"batch_size {body.batch_size} x n_iter {body.n_iter}: more than the {MAX_IMAGES} images "
                         "served a request")
    prompt, loras = schemas.loras_of(body.prompt, "", limits)
    if body.disable_extra_networks:
        loras = ()
    if edit is not None and edit.mask is None and limits.family.reference_edits:
        edit = replace(edit, strength=None)  # the denoising_strength every client sends: a reference edit has none
    with schemas.answered_400():
        edit = tasks.for_family(edit, limits.family)
    first = schemas.seed_of(None if body.seed == -1 else body.seed)
    request = Request(
        prompt=prompt, negative_prompt=body.negative_prompt, width=body.width, height=body.height,
        steps=body.steps, guidance=body.cfg_scale, seed=first, num_images=body.batch_size,
    )
    second = _hires(body, limits) if getattr(body, "enable_hr", False) else None
    steer = a1111_controlnet.control_of(body.alwayson_scripts, limits)
    return schemas.check_work([schemas.checked(Job(replace(request, seed=first + i * body.batch_size), scheduler, edit,
                                                   loras, hires=second, model=limits.model, control=steer), limits)
                                for i in range(body.n_iter)], limits)


def _hires(body: BaseModel, limits: Limits) -> hires.Hires:
    """A txt2img body's hires fix (enable_hr), its size from hr_scale or hr_resize_x/y; a BadRequest for one
    sdcpu does not make."""
    with schemas.answered_400():
        return hires.planned(body.width, body.height, body.hr_scale or 2.0, body.hr_resize_x or 0,
                             body.hr_resize_y or 0, limits.family.size_multiple, upscaler=body.hr_upscaler,
                             steps=body.hr_second_pass_steps or 0, strength=body.denoising_strength or 0.7)


def a1111_edit(body: BaseModel) -> tasks.Edit:
    """img2img's init image and mask, decoded and checked; the mask inverted and blurred as A1111 does (the blurred
    mask also pastes the result back onto the image: A1111's overlay, which makes the seams soft)."""
    from PIL import ImageFilter, ImageOps

    with schemas.answered_400():
        edit = tasks.edit(schemas.decode_base64("init_images", body.init_images[0]),
                          None if body.mask is None else schemas.decode_base64("mask", body.mask),
                          body.denoising_strength,
                          references=tuple(schemas.decode_base64("init_images", data) for data in body.init_images[1:]))
    if edit.mask is None:
        return edit
    mask = ImageOps.invert(edit.mask) if body.inpainting_mask_invert else edit.mask
    blur = (body.mask_blur_x, body.mask_blur_y) if body.mask_blur is None else (body.mask_blur, body.mask_blur)
    return replace(edit, mask=mask.filter(ImageFilter.GaussianBlur(blur)) if any(blur) else mask, paste_back=True)
