"""What the two APIs accept, checked strictly: OpenAI's image generations (JSON) and edits (a form) and AUTOMATIC1111's
txt2img and img2img, each turned into a `Job` (a generate.Request, the scheduler to use, the tasks.Edit of img2img and
inpainting).

Strict means: a field of the wrong type ("20" for steps), a field the API does not have or sdcpu does not implement
(A1111's hires fix, restore_faces...) and a value out of bounds are refused with a 400 naming the field, never
coerced or ignored (an edits form is text: its numbers and booleans are read from their text, nothing else). A prompt
longer than the text encoder reads (77 CLIP tokens, start and end included) is refused
too: truncating it would silently drop the end of what was asked for.
"""

import base64
import binascii
import contextlib
import secrets
from dataclasses import dataclass, field, replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sdcpu import generate, lora, tasks
from sdcpu.errors import UsageError
from sdcpu.generate import Request

MAX_STEPS = 150  # A1111's slider maximum
MAX_IMAGES = 10  # OpenAI's bound on n
MAX_GUIDANCE = 30.0  # A1111's CFG scale maximum
MAX_SEED = 2**32 - 1
MAX_PARTIAL_IMAGES = 3  # OpenAI's bound on partial_images

# A1111 sampler names (and sdcpu's own scheduler names) -> sdcpu.schedulers names, for samplers diffusers has.
SAMPLERS = {
    "Euler": "euler", "Euler a": "euler-a", "Heun": "heun", "DDIM": "ddim", "PLMS": "pndm", "PNDM": "pndm",
    "DPM++ 2M": "dpm++", "DPM++ 2M Karras": "dpm++-karras", "UniPC": "unipc", "LCM": "lcm",
}


class BadRequest(ValueError):
    """A request the server refuses: answered 400 with this one-line message."""


@dataclass(frozen=True)
class Job:
    request: Request
    scheduler: str | None = None  # an sdcpu.schedulers name; None: the pipeline's own (the recipe's)
    edit: tasks.Edit | None = None  # img2img or inpainting; None: text-to-image
    loras: tuple[lora.Lora, ...] = ()  # from the server's --lora-dir, named by the request
    # on_step(step_index, steps_run, latents of this job's images), on the worker thread after each step
    on_step: object = field(default=None, compare=False)

    @property
    def steps_run(self) -> int:
        return self.request.steps if self.edit is None else tasks.steps_run(self.request.steps, self.edit.strength)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _OpenAIFields(BaseModel):
    """The fields OpenAI's generations and edits share, and sdcpu's extras."""

    prompt: str = Field(min_length=1)
    n: int = Field(1, ge=1, le=MAX_IMAGES)
    size: str | None = None  # generations: 512x512; edits: the image's own size
    response_format: Literal["b64_json", "url"] = "b64_json"
    stream: bool = False
    partial_images: int = Field(0, ge=0, le=MAX_PARTIAL_IMAGES)
    model: str | None = None  # any name is accepted: the server runs the one model it loaded
    user: str | None = None
    # sdcpu's extra fields
    steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    negative_prompt: str = ""
    guidance: float | None = Field(None, ge=0, le=MAX_GUIDANCE)
    loras: str = ""  # "name[:weight],...": LoRAs of the server's --lora-dir (as <lora:name:weight> in the prompt)


class OpenAIImageRequest(_OpenAIFields):
    model_config = ConfigDict(extra="forbid", strict=True)


class OpenAIEditForm(_OpenAIFields):
    """/v1/images/edits' text fields (the image and mask are its files); a form holds text, read as numbers and
    booleans where the field is one ("2", "true"), never coerced otherwise."""

    model_config = ConfigDict(extra="forbid")
    strength: float | None = Field(None, gt=0, le=1)  # sdcpu's: None, diffusers' default for the task


class A1111Txt2ImgRequest(_Strict):
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = Field(20, ge=1, le=MAX_STEPS)
    width: int = 512
    height: int = 512
    seed: int = Field(-1, ge=-1, le=MAX_SEED)  # -1: a random seed, as in A1111
    cfg_scale: float = Field(7.0, ge=0, le=MAX_GUIDANCE)
    batch_size: int = Field(1, ge=1, le=MAX_IMAGES)
    n_iter: Literal[1] = 1
    sampler_name: str | None = None
    sampler_index: str | None = None  # the older spelling of sampler_name
    send_images: Literal[True] = True
    save_images: Literal[False] = False


class A1111Img2ImgRequest(A1111Txt2ImgRequest):
    init_images: list[str] = Field(min_length=1, max_length=1)  # base64, a data: URL prefix allowed; one image
    mask: str | None = None  # base64; white = repaint
    denoising_strength: float = Field(0.75, gt=0, le=1)
    mask_blur: int = Field(4, ge=0, le=64)  # A1111's default and slider maximum
    inpainting_mask_invert: Literal[0, 1] = 0
    # what diffusers does, alone: the masked area starts from the image ("original"); A1111's default 0 is "fill"
    inpainting_fill: Literal[1] = 1
    resize_mode: Literal[0] = 0  # a plain resize to width x height
    inpaint_full_res: Literal[False] = False  # the whole image is repainted at its size, not a crop around the mask


class A1111Options(_Strict):
    sd_model_checkpoint: str | None = None  # the only option set: to the model loaded


@dataclass(frozen=True)
class Limits:
    max_size: int  # the largest width or height served
    defaults: dict  # the recipe's call defaults (steps.defaults): num_inference_steps, guidance_scale
    tokenizer: object  # the pipeline's tokenizer (a copy: tokenizers are not thread-safe), to count prompt tokens
    lora_folder: lora.Folder | None = None  # serve --lora-dir: the LoRAs requests may name


def from_openai(body: _OpenAIFields, limits: Limits, edit: tasks.Edit | None = None) -> Job:
    if body.response_format == "url":
        raise BadRequest("response_format 'url' is not served (sdcpu stores no images): ask for 'b64_json'")
    if body.stream and body.n > 1:
        raise BadRequest("stream: true makes one image: n must be 1")
    if body.partial_images and not body.stream:
        raise BadRequest("partial_images needs stream: true")
    width, height = _size(body.size) if body.size else edit.image.size if edit else (512, 512)
    prompt, loras = _loras(body.prompt, body.loras, limits)
    request = Request(
        prompt=prompt, negative_prompt=body.negative_prompt, width=width, height=height,
        steps=body.steps or limits.defaults.get("num_inference_steps", 20),
        guidance=limits.defaults.get("guidance_scale", 7.5) if body.guidance is None else body.guidance,
        seed=_seed(body.seed), num_images=body.n,
    )
    return _checked(Job(request, edit=edit, loras=loras), limits)


def openai_edit(image: bytes, mask: bytes | None, strength: float | None) -> tasks.Edit:
    """The uploads of /v1/images/edits, decoded and checked; the mask's alpha 0 marks the area to edit (OpenAI's)."""
    with _answered_400():
        return tasks.edit(image, mask, strength, mask_alpha=True)


def from_a1111(body: A1111Txt2ImgRequest, limits: Limits, edit: tasks.Edit | None = None) -> Job:
    sampler = body.sampler_name or body.sampler_index
    if sampler is not None and sampler not in SAMPLERS:
        raise BadRequest(f"sampler_name {sampler!r} is not served; choose from: {', '.join(SAMPLERS)}")
    prompt, loras = _loras(body.prompt, "", limits)
    request = Request(
        prompt=prompt, negative_prompt=body.negative_prompt, width=body.width, height=body.height,
        steps=body.steps, guidance=body.cfg_scale, seed=_seed(None if body.seed == -1 else body.seed),
        num_images=body.batch_size,
    )
    return _checked(Job(request, SAMPLERS.get(sampler), edit, loras), limits)


def _loras(prompt: str, listed: str, limits: Limits) -> tuple[str, tuple[lora.Lora, ...]]:
    """PROMPT without its `<lora:name:weight>` tags, and the LoRAs those tags and LISTED (`name[:weight],...`, the
    OpenAI routes' field) name, each a file of the server's --lora-dir: a request never names a path or URL."""
    with _answered_400():
        tags = "".join(f"<lora:{item.strip()}>" for item in listed.split(",") if item.strip())
        prompt, named = lora.prompt_loras(prompt)
        named += lora.prompt_loras(tags)[1]  # one parser for both spellings
        if not named:
            return prompt, ()
        if limits.lora_folder is None:
            raise BadRequest("this server serves no LoRAs: start sdcpu serve with --lora-dir DIR")
        names = [name for name, _ in named]
        if len(set(names)) < len(names):
            raise BadRequest(f"LoRA {next(n for n in names if names.count(n) > 1)!r} is named twice: once, with its "
                             "weight")
        return prompt, tuple(lora.Lora(str(limits.lora_folder.resolve(name)), weight) for name, weight in named)


def a1111_edit(body: A1111Img2ImgRequest) -> tasks.Edit:
    """img2img's init image and mask, decoded and checked; the mask inverted and blurred as A1111 does (the blurred
    mask also pastes the result back onto the image: A1111's overlay, which makes the seams soft)."""
    from PIL import ImageFilter, ImageOps

    with _answered_400():
        edit = tasks.edit(_base64("init_images", body.init_images[0]),
                          None if body.mask is None else _base64("mask", body.mask), body.denoising_strength)
    if edit.mask is None:
        return edit
    mask = ImageOps.invert(edit.mask) if body.inpainting_mask_invert else edit.mask
    return replace(edit, mask=mask.filter(ImageFilter.GaussianBlur(body.mask_blur)) if body.mask_blur else mask,
                   paste_back=True)


def _base64(field_name: str, text: str) -> bytes:
    if len(text) > tasks.MAX_INPUT_BYTES * 4 // 3 + 100:  # base64's 4 characters per 3 bytes, and a data: prefix
        raise BadRequest(f"{field_name}: more than the {tasks.MAX_INPUT_BYTES // 2**20} MiB accepted")
    try:
        return base64.b64decode(text.split(",", 1)[1] if text.startswith("data:") else text, validate=True)
    except (binascii.Error, IndexError):
        raise BadRequest(f"{field_name}: not base64 (a data: URL prefix is allowed)") from None


@contextlib.contextmanager
def _answered_400():
    """The shared request checks (sdcpu.generate) raise UsageError; the server answers them 400."""
    try:
        yield
    except UsageError as err:
        raise BadRequest(str(err)) from None


def _size(text: str) -> tuple[int, int]:
    with _answered_400():
        return generate.parse_size(text)


def _seed(seed: int | None) -> int:
    return secrets.randbelow(MAX_SEED - MAX_IMAGES) if seed is None else seed


def _checked(job: Job, limits: Limits) -> Job:
    request = job.request
    with _answered_400():
        generate.check_size(request.width, request.height, limits.max_size)
        tasks.check_steps(request.steps, job.edit and job.edit.strength)
    for field, text in (("prompt", request.prompt), ("negative_prompt", request.negative_prompt)):
        tokens = len(limits.tokenizer(text).input_ids)
        if tokens > limits.tokenizer.model_max_length:
            raise BadRequest(f"{field} is {tokens} tokens; the text encoder reads {limits.tokenizer.model_max_length} "
                             "(start and end included): shorten it")
    return job
