"""Image-to-image and inpainting beside text-to-image: the input images, checked, and the pipeline of each task.

A task is what a request's inputs make it: no image, text-to-image; an image, img2img (its `strength` says how much of
the schedule repaints it; for a family that edits by reference, FLUX.2 klein, one or more images that condition every
step, no strength); an image and a mask, inpainting (white = repaint, as A1111 and OVMS; any UNet: a plain SD UNet
blends the kept area back at each step, a 9-channel inpainting UNet takes the masked image as input). Each task
runs diffusers' own pipeline, made from the loaded one with `from_pipe`: the same components, so one set of weights
(and whatever a recipe did to them: a backend's compiled UNet, TAESD, a LoRA) serves all three.
"""

import hashlib
import io
import math
from dataclasses import dataclass, replace

from sdcpu.errors import UsageError
from sdcpu.models import state

TASKS = ("txt2img", "img2img", "inpaint")
MAX_INPUT_PIXELS = 4096 * 4096  # an input image's decoded size: above, refused before decoding (a 40000x40000 header)
MAX_INPUT_BYTES = 50 * 2**20
FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
READ_AS = {"MPO": "JPEG"}  # a phone camera's JPEG with its extra frames (Multi-Picture Object): its first frame
# reference images an edit takes at most: each adds its own tokens (a 1024x1024 one 4096) to every step's attention
MAX_REFERENCES = 4


@dataclass(frozen=True)
class Edit:
    """The input of img2img or inpainting: the image, the optional mask (L mode, white = repaint), the strength, and
    the SHA-256 of the image's bytes (kept in the PNG's metadata). `for_family` settles it for a model: the strength
    left out takes the task's default, or stays None in a reference edit (`by_reference`, with its further images)."""

    image: object  # PIL RGB
    mask: object = None  # PIL L, the image's size
    strength: float | None = None  # None: not given (the task's default), or a reference edit's (none)
    image_sha256: str = ""
    paste_back: bool = False  # the result pasted onto the image through the mask (A1111's overlay; its blur: soft seams)
    references: tuple = ()  # a reference edit's further images (PIL RGB), after `image`
    by_reference: bool = False  # settled by for_family: the images condition every step (FLUX.2 klein's editing)

    @property
    def task(self) -> str:
        return "inpaint" if self.mask is not None else "img2img"

    def sized(self, width: int, height: int) -> "Edit":
        """The image and mask at the request's size (a plain resize, A1111's resize_mode 0); a reference edit's images
        as they are (its pipeline fits each, keeping its own size and aspect)."""
        from PIL import Image

        if self.image.size == (width, height) or self.by_reference:
            return self
        mask = None if self.mask is None else self.mask.resize((width, height), Image.NEAREST)
        return replace(self, image=self.image.resize((width, height), Image.LANCZOS), mask=mask)


def steps_run(steps: int, strength: float | None) -> int:
    """The denoising steps a call of STEPS runs: every one for text-to-image (STRENGTH None), else diffusers'
    int(steps x strength), the end of the schedule (strength 0.5 of 20 steps: the last 10)."""
    return steps if strength is None else min(int(steps * strength), steps)


def min_steps(strength: float | None) -> int:
    """The fewest steps that run at least one at STRENGTH (None: every step runs)."""
    if strength is None:
        return 1
    steps = math.ceil(1 / strength)
    return steps if steps_run(steps, strength) >= 1 else steps + 1


def default_strength(mask: bool) -> float:
    """diffusers' defaults: inpainting repaints the masked area from noise (1), img2img keeps a quarter (0.75)."""
    return 1.0 if mask else 0.75


def check_steps(steps: int, strength: float | None) -> None:
    """Refuse STEPS that would run none at STRENGTH (None: text-to-image, every step runs)."""
    if steps_run(steps, strength) < 1:
        raise UsageError(f"{steps} steps at strength {strength} run none (int(steps x strength)): give at least "
                         f"{min_steps(strength)} steps")


def check_strength(strength: float) -> float:
    if not 0 < strength <= 1:
        raise UsageError(f"strength must be in (0, 1], got {strength}: 1 repaints everything, 0.3 keeps most")
    return strength


def decode(data: bytes, what: str):
    """DATA decoded as an image upright and in 8 bits per channel (its EXIF orientation applied, a 16-bit one scaled
    down), or a one-line UsageError: too large a file or image, not an image, truncated."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) > MAX_INPUT_BYTES:
        raise UsageError(f"{what}: {len(data) / 2**20:.1f} MiB, more than the {MAX_INPUT_BYTES // 2**20} MiB accepted")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if READ_AS.get(image.format, image.format) not in FORMATS:
                raise UsageError(f"{what}: {image.format} is not accepted; send {', '.join(FORMATS)}")
            if image.width * image.height > MAX_INPUT_PIXELS:
                raise UsageError(f"{what}: {image.width}x{image.height} is more than the {MAX_INPUT_PIXELS} pixels "
                                 "accepted")
            image.load()
            return _eight_bits(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as err:  # PIL's own bound, from the header: far above ours
        raise UsageError(f"{what}: more than the {MAX_INPUT_PIXELS} pixels accepted ({err})") from None
    except UnidentifiedImageError:
        raise UsageError(f"{what}: not an image sdcpu can read ({', '.join(FORMATS)})") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        raise UsageError(f"{what}: a broken image ({err})") from None


def _eight_bits(image):
    """IMAGE with 8-bit channels: a 16-bit grey one ("I;16", or "I" holding 16-bit values) scaled by 1/256, where PIL's
    own conversion would clip every value above 255 to white."""
    import numpy as np
    from PIL import Image

    if not image.mode.startswith("I"):
        return image.copy()
    return Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8), "L")


def edit(image_data: bytes, mask_data: bytes | None = None, strength: float | None = None, *,
         mask_alpha: bool = False, references: tuple[bytes, ...] = ()) -> Edit:
    """An Edit from encoded IMAGE_DATA (and MASK_DATA: white = repaint; with MASK_ALPHA, OpenAI's convention: alpha 0
    marks the area to repaint; REFERENCES: a reference edit's further images), each checked by decoding. STRENGTH
    None: left to `for_family`."""
    if len(references) >= MAX_REFERENCES:
        raise UsageError(f"{len(references) + 1} images: at most {MAX_REFERENCES} (each adds its tokens to every step)")
    image = decode(image_data, "image").convert("RGB")
    further = tuple(decode(data, f"image {i}").convert("RGB") for i, data in enumerate(references, start=2))
    mask = None
    if mask_data is not None:
        mask = decode(mask_data, "mask")
        if mask_alpha and not mask.has_transparency_data:
            raise UsageError("mask: no alpha channel; its alpha 0 marks the area to edit (OpenAI's convention)")
        mask = mask.convert("RGBA").getchannel("A").point([255] + [0] * 255) if mask_alpha else mask.convert("L")
        if mask.size != image.size:
            raise UsageError(f"mask: {mask.width}x{mask.height}, not the image's {image.width}x{image.height}")
    return Edit(image, mask, strength if strength is None else check_strength(strength),
                hashlib.sha256(image_data).hexdigest(), references=further)


def for_family(edit: Edit | None, family) -> Edit | None:
    """EDIT as FAMILY's models run it: a reference edit where the family edits by reference and no mask is given (no
    strength: refused where one was given), else one image repainted from part of the schedule (the strength left
    out: the task's default); refused in one line where the family cannot run it. Settled edits pass as they are."""
    if edit is None or edit.by_reference:
        return edit
    reference = family.reference_edits and edit.mask is None
    if edit.references and not reference:
        does = ("inpainting takes one image and its mask" if family.reference_edits else
                f"{family.name} models edit one image (several are reference editing, which FLUX.2 klein does)")
        raise UsageError(f"{len(edit.references) + 1} images: {does}")
    if not reference:
        return edit if edit.strength is not None else replace(edit, strength=default_strength(edit.mask is not None))
    if edit.strength is not None:
        raise UsageError(f"strength {edit.strength}: {family.name} models edit by reference (the images condition "
                         "every step, each step runs): leave the strength out")
    return replace(edit, by_reference=True)


def pipeline_for(pipe, task: str, controlnet=None):
    """PIPE's pipeline for TASK (its family's diffusers class; with CONTROLNET, its ControlNet class), built once from
    its components (diffusers' from_pipe) and kept on PIPE."""
    from unittest import mock

    import diffusers

    from sdcpu import families

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    family = families.of(pipe)
    if task not in family.pipelines:
        raise UsageError(f"{family.name} models make {', '.join(family.pipelines)} in sdcpu, not {task}")
    if task != "inpaint" and family.inpainting(pipe):
        channels = getattr(pipe, family.denoiser.attribute).config.in_channels
        raise UsageError(f"this model's {family.denoiser.label} is an inpainting one ({channels} input channels): "
                         "it makes only inpainting; give an image and a mask")
    if controlnet is not None and task not in family.control_pipelines:
        raise UsageError(f"{family.name} models take no ControlNet in sdcpu")
    kind = getattr(diffusers, (family.control_pipelines if controlnet is not None else family.pipelines)[task])
    if isinstance(pipe, kind) and controlnet is None:
        return pipe
    shared = state.of(pipe)
    kept, key = shared.tasks, task if controlnet is None else (task, id(controlnet))
    if key not in kept:
        # the components given by name: from_pipe would drop one of another class than the model's own (TAESD as
        # vae); its closing `to(dtype)` (float32 unless told) is held off: it would cast the shared components, and
        # FLUX.2's bf16 weights would double, a bf16 UNet run in float32, bf16-weights' float32 VAE turn bf16
        with mock.patch.object(kind, "to", lambda made, *args, **kwargs: made):
            made = kind.from_pipe(pipe, **{name: getattr(pipe, name) for name in family.components},
                                  **({} if controlnet is None else {"controlnet": controlnet}))
        made.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
        made.__dict__["sdcpu"] = shared  # one state for the pipelines of one set of components
        kept[key] = made
    return kept[key]


def call_arguments(sized: Edit | None, steps: int, count: int) -> dict:
    """The pipeline-call arguments of an edit (already sized to the request) for COUNT images at STEPS (none for
    text-to-image); refuses steps that would run none."""
    if sized is None:
        return {}
    if sized.by_reference:
        return {"image": [sized.image, *sized.references]}  # one set of references conditions every image of the call
    check_steps(steps, sized.strength)
    arguments = {"image": [sized.image] * count, "strength": sized.strength}
    if sized.mask is not None:
        arguments["mask_image"] = [sized.mask] * count
    return arguments


def pasted_back(pipeline, sized: Edit | None, images: list) -> list:
    """IMAGES onto the (sized) edit's image through its mask, where the edit asks for it (diffusers' apply_overlay),
    else as they are."""
    if sized is None or not sized.paste_back or sized.mask is None:
        return images
    return [pipeline.image_processor.apply_overlay(sized.mask, sized.image, image) for image in images]
