"""What the two APIs accept, checked strictly: OpenAI's image generations (JSON) and edits (a form) here, AUTOMATIC1111's
txt2img and img2img in a1111_fields.py; each is turned into a `Job` (a generate.Request, the scheduler to use, the
tasks.Edit of img2img and inpainting), with the checks both share (prompt length, size, LoRA names).

Strict means: a field of the wrong type ("20" for steps), a field the API does not have, a value that asks for what
sdcpu does not do (A1111's hires fix on, restore_faces on...) and a value out of bounds are refused with a 400 naming
the field, never coerced or ignored (an edits form is text: its numbers and booleans are read from their text, nothing else). A prompt
longer than the text encoder reads (77 CLIP tokens, start and end included) is refused
too: truncating it would silently drop the end of what was asked for.
"""

import binascii
import contextlib
import secrets
from dataclasses import dataclass, field
from typing import Annotated, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdcpu.errors import UsageError
from sdcpu.families import sd
from sdcpu.families.base import Family
from sdcpu.models.loras import Folder, Lora, prompt_loras
from sdcpu.pipeline import control, generate, tasks
from sdcpu.pipeline.generate import Request
from sdcpu.pipeline.hires import Hires
from sdcpu.serve import uploads

MAX_STEPS = 150  # A1111's slider maximum
MAX_IMAGES = 10  # OpenAI's bound on n
MAX_GUIDANCE = 30.0  # A1111's CFG scale maximum
MAX_SEED = 2**32 - 1
MAX_PARTIAL_IMAGES = 3  # OpenAI's bound on partial_images
MAX_PROMPT_CHARS = 4096  # far more than 77 CLIP tokens take (the token check is the real bound), room for LoRA tags
MAX_NAME_CHARS = 256  # a model, user, sampler, schedule or option name
# one upload as base64: 4 characters per 3 bytes, a line break (CR LF) after every 76 as MIME writes it, a data: prefix
MAX_BASE64_CHARS = tasks.MAX_INPUT_BYTES * 4 // 3 * 78 // 76 + 100

class BadRequest(ValueError):
    """A request the server refuses: answered 400 with this one-line message."""


@dataclass(frozen=True)
class Job:
    request: Request
    scheduler: str | None = None  # an sdcpu.models.schedulers name; None: the pipeline's own (the recipe's)
    edit: tasks.Edit | None = None  # img2img or inpainting; None: text-to-image
    loras: tuple[Lora, ...] = ()  # from the server's --lora-dir, named by the request
    # on_step(step_index, steps_run, latents of this job's images), on the worker thread after each step
    on_step: object = field(default=None, compare=False)
    hires: Hires | None = None  # text-to-image's second pass (A1111's hires fix)
    model: str | None = None  # the served model's name (serve/served.py); None: the default
    control: object = None  # a control.Control: a ControlNet steers it

    @property
    def steps_run(self) -> int:
        """Denoising steps the job's call runs, both passes of a hires fix."""
        first = tasks.steps_run(self.request.steps, self.edit and self.edit.strength)
        return first + (self.hires.steps_run(self.request.steps) if self.hires else 0)

    @property
    def work(self) -> int:
        """Pixel-steps: width x height x steps x images, each pass at its own size."""
        r = self.request
        first = r.width * r.height * tasks.steps_run(r.steps, self.edit and self.edit.strength)
        second = self.hires.width * self.hires.height * self.hires.steps_run(r.steps) if self.hires else 0
        return (first + second) * r.num_images


Prompt = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]


class Finite(BaseModel):
    """A request body of either API: no field the API does not have, and every float finite (NaN and ±Infinity
    refused with a 400 before any compute: JSON parsers take them, and they would turn into a blank image or an
    answer that cannot be written as JSON)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Strict(Finite):
    model_config = ConfigDict(strict=True)


class _OpenAIFields(Finite):
    """The fields OpenAI's generations and edits share, and sdcpu's extras."""

    prompt: Prompt = Field(min_length=1)
    n: int = Field(1, ge=1, le=MAX_IMAGES)
    size: str | None = Field(None, max_length=11)  # generations: 512x512; edits: the image's own size
    response_format: Literal["b64_json", "url"] = "b64_json"
    stream: bool = False
    partial_images: int = Field(0, ge=0, le=MAX_PARTIAL_IMAGES)
    model: Name | None = None  # one of the served models (serve --model); any name where one is served
    user: Name | None = None
    # sdcpu's extra fields
    steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    negative_prompt: Prompt = ""
    guidance: float | None = Field(None, ge=0, le=MAX_GUIDANCE)
    # "name[:weight],...": LoRAs of the server's --lora-dir (as <lora:name:weight> in the prompt)
    loras: Annotated[str, Field(max_length=4 * MAX_NAME_CHARS)] = ""
    # a ControlNet's control image (base64, a data: URL prefix allowed), its type, how strongly it steers, and whether
    # a canny image is an edge map already
    control_image: Annotated[str, Field(max_length=MAX_BASE64_CHARS)] | None = None
    control_type: Literal[control.KINDS] = "canny"
    control_scale: float = Field(1.0, ge=0, le=control.MAX_SCALE)
    control_as_is: bool = False


class OpenAIImageRequest(_OpenAIFields):
    model_config = ConfigDict(strict=True)


class OpenAIEditForm(_OpenAIFields):
    """/v1/images/edits' text fields (the image and mask are its files); a form holds text, read as numbers and
    booleans where the field is one ("2", "true"), never coerced otherwise."""

    strength: float | None = Field(None, gt=0, le=1)  # sdcpu's: None, diffusers' default for the task


@dataclass(frozen=True)
class Limits:
    max_size: int  # the largest width or height served
    defaults: generate.Defaults  # generate.defaults_for the pipeline: the recipe's steps= and guidance=, else the model's
    tokenizer: object  # the pipeline's tokenizer (a copy: tokenizers are not thread-safe), to count prompt tokens
    lora_folder: Folder | None = None  # serve --lora-dir: the LoRAs requests may name
    model: str = ""  # the model served (A1111's sd_model_checkpoint)
    scheduler: str | None = None  # the recipe's scheduler (an sdcpu.models.schedulers name), run when a request names none
    family: Family = sd.FAMILY  # the served model's family: its size multiple, how it edits
    control: str | None = None  # why a ControlNet cannot steer the served model (control.refusal); None: it can


def from_openai(body: _OpenAIFields, limits: Limits, edit: tasks.Edit | None = None) -> Job:
    if body.response_format == "url":
        raise BadRequest("response_format 'url' is not served (sdcpu stores no images): ask for 'b64_json'")
    if body.stream and body.n > 1:
        raise BadRequest("stream: true makes one image: n must be 1")
    if body.partial_images and not body.stream:
        raise BadRequest("partial_images needs stream: true")
    with answered_400():
        edit = tasks.for_family(edit, limits.family)
    width, height = (_size(body.size) if body.size else
                     generate.fitted_size(*edit.image.size, limits.max_size, limits.family.size_multiple)
                     if edit else (limits.defaults.width, limits.defaults.height))
    prompt, loras = loras_of(body.prompt, body.loras, limits)
    request = Request(
        prompt=prompt, negative_prompt=body.negative_prompt, width=width, height=height,
        steps=body.steps or limits.defaults.steps,
        guidance=limits.defaults.guidance if body.guidance is None else body.guidance,
        seed=seed_of(body.seed), num_images=body.n,
    )
    steer = None if body.control_image is None else controlled(limits, lambda: control.control(
        decode_base64("control_image", body.control_image), body.control_type, body.control_scale,
        preprocess=not body.control_as_is))
    return check_work([checked(Job(request, edit=edit, loras=loras, model=limits.model, control=steer), limits)],
                      limits)[0]


def controlled(limits: Limits, make) -> "control.Control":
    """The Control MAKE() makes for a request to a model of LIMITS, or a BadRequest (the model takes none, or the
    control is not valid)."""
    if limits.control:
        raise BadRequest(limits.control)
    with answered_400():
        return make()


def openai_edit(images: list[bytes], mask: bytes | None, strength: float | None) -> tasks.Edit:
    """The uploads of /v1/images/edits, decoded and checked (IMAGES: one, or a reference edit's several); the mask's
    alpha 0 marks the area to edit (OpenAI's)."""
    with answered_400():
        return tasks.edit(images[0], mask, strength, mask_alpha=True, references=tuple(images[1:]))


def loras_of(prompt: str, listed: str, limits: Limits) -> tuple[str, tuple[Lora, ...]]:
    """PROMPT without its `<lora:name:weight>` tags, and the LoRAs those tags and LISTED (`name[:weight],...`, the
    OpenAI routes' field) name, each a file of the server's --lora-dir: a request never names a path or URL."""
    with answered_400():
        tags = "".join(f"<lora:{item.strip()}>" for item in listed.split(",") if item.strip())
        prompt, named = prompt_loras(prompt)
        named += prompt_loras(tags)[1]  # one parser for both spellings
        if not named:
            return prompt, ()
        if limits.lora_folder is None:
            raise BadRequest("this server serves no LoRAs: start sdcpu serve with --lora-dir DIR")
        names = [name for name, _ in named]
        if len(set(names)) < len(names):
            raise BadRequest(f"LoRA {next(n for n in names if names.count(n) > 1)!r} is named twice: once, with its "
                             "weight")
        return prompt, tuple(Lora(str(limits.lora_folder.resolve(name)), weight) for name, weight in named)


def decode_base64(field_name: str, text: str) -> bytearray:
    """A1111's base64 image field FIELD_NAME (TEXT; a data: URL prefix and line breaks allowed), decoded."""
    if len(text) > MAX_BASE64_CHARS:
        raise BadRequest(f"{field_name}: more than the {tasks.MAX_INPUT_BYTES // 2**20} MiB accepted")
    try:
        return uploads.decode_base64(text, text.index(",", 0, 256) + 1 if text.startswith("data:") else 0)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{field_name}: not base64 (a data: URL prefix is allowed)") from None


def parse_json(model: type[BaseModel], data: bytes) -> BaseModel:
    """DATA (a JSON body) as MODEL, by pydantic's own parser (it holds the GIL only briefly: the event loop goes on
    beside it in a thread); refused as FastAPI refuses a body parameter."""
    try:
        return model.model_validate_json(data)
    except ValidationError as err:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])} for error in err.errors()]) from None


def validation_message(errors: list[dict]) -> str:
    """The one line a 400 says for pydantic's ERRORS: the first one's field and message, and how many more."""
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def json_body(model: type[BaseModel]) -> dict:
    """The OpenAPI description of a route's JSON body of MODEL, for a route that reads its body itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


@contextlib.contextmanager
def answered_400():
    """The shared request checks (sdcpu.pipeline.generate) raise UsageError; the server answers them 400."""
    try:
        yield
    except UsageError as err:
        raise BadRequest(str(err)) from None


def _size(text: str) -> tuple[int, int]:
    with answered_400():
        return generate.parse_size(text)


def seed_of(seed: int | None) -> int:
    return secrets.randbelow(MAX_SEED - MAX_IMAGES) if seed is None else seed


def checked(job: Job, limits: Limits) -> Job:
    request = job.request
    with answered_400():
        generate.check_size(request.width, request.height, limits.max_size, limits.family.size_multiple)
        tasks.check_steps(request.steps, job.edit and job.edit.strength)
        generate.check_tokens(limits.tokenizer, request)  # the one prompt-length check, generate's
        generate.check_hires(job.hires, limits.family, job.edit, request.steps, limits.max_size)
    return job


def check_work(jobs: list[Job], limits: Limits) -> list[Job]:
    """Refuse a request (JOBS) asking for more than one image at the largest size and the most steps: pixels x
    steps x images, at most max_size^2 x MAX_STEPS (1024x1024x150 = 157 M by default)."""
    work = sum(job.work for job in jobs)
    bound = limits.max_size**2 * MAX_STEPS
    if work > bound:
        raise BadRequest(f"the request asks for {work / 1e6:.0f} M pixel-steps (width x height x steps x images); "
                         f"this server makes at most {bound / 1e6:.0f} M a request (one {limits.max_size}x"
                         f"{limits.max_size} image at {MAX_STEPS} steps)")
    return jobs
