"""sd-webui-controlnet's API as A1111's clients send it: `alwayson_scripts: {"controlnet": {"args": [UNIT, ...]}}` in
txt2img and img2img (webuiapi's ControlNetUnit.to_dict(), the extension's own field names), made into one
control.Control; and the extension's routes clients read first (/controlnet/version, /model_list, /module_list).

A unit's `module` is its preprocessor: `canny` (edges found here from the unit's image, `threshold_a`/`_b` its low and
high thresholds, A1111's 100 and 200 where not set), or `none` (the image is the map already: its type is read from
the `model` name, which says canny or depth). A depth estimator is not bundled: a depth preprocessor is refused with
the reason (send the depth map, module none). `weight`, `guidance_start`/`_end` and `resize_mode` (Just Resize, Crop
and Resize, Resize and Fill) are honoured; `control_mode` only Balanced, `hr_option` only Both (the ControlNet steers
both passes of a hires fix), no `mask`; `low_vram`, `processor_res` and `pixel_perfect` change nothing here (the map
is made at the image's own size). One enabled unit; disabled ones are skipped.
"""

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import Field, ValidationError

from sdcpu.pipeline import control
from sdcpu.serve import schemas

RESIZE_MODES = {"Just Resize": "just", "Crop and Resize": "crop", "Resize and Fill": "fill", 0: "just", 1: "crop",
                2: "fill"}
PREPROCESSORS = ("canny", "none")  # the modules sdcpu runs
Base64 = Annotated[str, Field(max_length=schemas.MAX_BASE64_CHARS)]


class Unit(schemas.Strict):
    """One ControlNet unit, with the extension's defaults."""

    enabled: bool = True
    image: Base64 | None = None
    input_image: Base64 | None = None  # the extension's older name for image
    mask: Base64 | None = None
    module: schemas.Name = "none"
    model: schemas.Name = "None"
    weight: float = Field(1.0, ge=0, le=control.MAX_SCALE)
    resize_mode: str | int = "Crop and Resize"
    low_vram: bool = False
    processor_res: int = 512
    threshold_a: float = -1  # canny's low threshold; -1: A1111's default
    threshold_b: float = -1  # canny's high threshold
    guidance_start: float = Field(0.0, ge=0, le=1)
    guidance_end: float = Field(1.0, ge=0, le=1)
    control_mode: str | int = "Balanced"
    pixel_perfect: bool = False
    hr_option: str = "Both"


def control_of(scripts: dict[str, Any] | None, limits: schemas.Limits) -> control.Control | None:
    """The Control of a request's alwayson_scripts (None: none, or no unit enabled); a BadRequest naming the field
    for what sdcpu does not do."""
    if not scripts:
        return None
    for key in scripts:
        if key.lower() != "controlnet":
            raise schemas.BadRequest(f"alwayson_scripts.{key}: sdcpu runs no such script (only controlnet)")
    script = next(iter(scripts.values()))
    args = script.get("args") if isinstance(script, dict) else None
    if not isinstance(args, list):
        raise schemas.BadRequest("alwayson_scripts.controlnet: give {\"args\": [UNIT, ...]}")
    units = []
    for index, unit in enumerate(args):
        try:
            units.append(Unit.model_validate(unit))
        except ValidationError as err:
            raise schemas.BadRequest("alwayson_scripts.controlnet.args." + str(index) + "." +
                                     schemas.validation_message(err.errors())) from None
    enabled = [unit for unit in units if unit.enabled]
    if len(enabled) > 1:
        raise schemas.BadRequest(f"alwayson_scripts.controlnet: {len(enabled)} enabled units; sdcpu runs one")
    return _control(enabled[0], limits) if enabled else None


def _control(unit: Unit, limits: schemas.Limits) -> control.Control:
    where = "alwayson_scripts.controlnet.args"
    module = unit.module.lower()
    if "depth" in module:
        raise schemas.BadRequest(f"{where}.module {unit.module!r}: sdcpu bundles no depth estimator; send the depth "
                                 "map as the image with module none and a depth model")
    if module not in PREPROCESSORS:
        raise schemas.BadRequest(f"{where}.module {unit.module!r}: sdcpu runs {', '.join(PREPROCESSORS)}")
    kinds = [kind for kind in control.KINDS if kind in (module + " " + unit.model.lower())]
    if len(kinds) != 1:
        raise schemas.BadRequest(f"{where}.model {unit.model!r}: name a canny or a depth ControlNet (the name says "
                                 "which), or use module canny")
    refused = {"control_mode": (unit.control_mode, ("Balanced", 0)), "hr_option": (unit.hr_option, ("Both",)),
               "mask": (unit.mask, (None, "")), "resize_mode": (unit.resize_mode, tuple(RESIZE_MODES))}
    for name, (value, accepted) in refused.items():
        if value not in accepted:
            raise schemas.BadRequest(f"{where}.{name} {value!r}: sdcpu takes {', '.join(map(repr, accepted))}")
    image = unit.image or unit.input_image
    if not image:
        raise schemas.BadRequest(f"{where}.image: the control image is missing (sdcpu does not reuse the init image)")
    low = unit.threshold_a if unit.threshold_a > 0 else control.CANNY[0]
    high = unit.threshold_b if unit.threshold_b > 0 else control.CANNY[1]
    return schemas.controlled(limits, lambda: control.control(
        schemas.decode_base64(f"{where}.image", image), kinds[0], unit.weight, preprocess=module == "canny",
        thresholds=(low, high), start=unit.guidance_start, end=unit.guidance_end,
        resize=RESIZE_MODES[unit.resize_mode]))


def router(service) -> APIRouter:
    """The extension's listings: its API version, the ControlNets (each served family's, by type) and preprocessors."""
    routes = APIRouter(prefix="/controlnet")

    @routes.get("/version")
    async def version():
        return {"version": 2}

    @routes.get("/model_list")
    async def model_list():
        names = {name for model in service.worker.models.all if model.facts is not None
                 for name in model.facts.family.controlnets.values()}
        return {"model_list": sorted(names)}

    @routes.get("/module_list")
    async def module_list():
        return {"module_list": list(PREPROCESSORS)}

    return routes
