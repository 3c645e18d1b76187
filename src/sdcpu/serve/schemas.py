"""What the two APIs accept, checked strictly: the OpenAI images request and AUTOMATIC1111's txt2img request, each
turned into a `Job` (a generate.Request plus the scheduler to use).

Strict means: a field of the wrong type ("20" for steps), a field the API does not have or sdcpu does not implement
(A1111's hires fix, restore_faces...) and a value out of bounds are refused with a 400 naming the field, never
coerced or ignored. A prompt longer than the text encoder reads (77 CLIP tokens, start and end included) is refused
too: truncating it would silently drop the end of what was asked for.
"""

import contextlib
import secrets
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sdcpu import generate
from sdcpu.errors import UsageError
from sdcpu.generate import Request

MAX_STEPS = 150  # A1111's slider maximum
MAX_IMAGES = 10  # OpenAI's bound on n
MAX_GUIDANCE = 30.0  # A1111's CFG scale maximum
MAX_SEED = 2**32 - 1

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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class OpenAIImageRequest(_Strict):
    prompt: str = Field(min_length=1)
    n: int = Field(1, ge=1, le=MAX_IMAGES)
    size: str = "512x512"
    response_format: Literal["b64_json", "url"] = "b64_json"
    model: str | None = None  # any name is accepted: the server runs the one model it loaded
    user: str | None = None
    # sdcpu's extra fields
    steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    negative_prompt: str = ""
    guidance: float | None = Field(None, ge=0, le=MAX_GUIDANCE)


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


@dataclass(frozen=True)
class Limits:
    max_size: int  # the largest width or height served
    defaults: dict  # the recipe's call defaults (steps.defaults): num_inference_steps, guidance_scale
    tokenizer: object  # the pipeline's tokenizer (a copy: tokenizers are not thread-safe), to count prompt tokens


def from_openai(body: OpenAIImageRequest, limits: Limits) -> Job:
    if body.response_format == "url":
        raise BadRequest("response_format 'url' is not served (sdcpu stores no images): ask for 'b64_json'")
    width, height = _size(body.size)
    request = Request(
        prompt=body.prompt, negative_prompt=body.negative_prompt, width=width, height=height,
        steps=body.steps or limits.defaults.get("num_inference_steps", 20),
        guidance=limits.defaults.get("guidance_scale", 7.5) if body.guidance is None else body.guidance,
        seed=_seed(body.seed), num_images=body.n,
    )
    return _checked(Job(request), limits)


def from_a1111(body: A1111Txt2ImgRequest, limits: Limits) -> Job:
    sampler = body.sampler_name or body.sampler_index
    if sampler is not None and sampler not in SAMPLERS:
        raise BadRequest(f"sampler_name {sampler!r} is not served; choose from: {', '.join(SAMPLERS)}")
    request = Request(
        prompt=body.prompt, negative_prompt=body.negative_prompt, width=body.width, height=body.height,
        steps=body.steps, guidance=body.cfg_scale, seed=_seed(None if body.seed == -1 else body.seed),
        num_images=body.batch_size,
    )
    return _checked(Job(request, SAMPLERS.get(sampler)), limits)


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
    for field, text in (("prompt", request.prompt), ("negative_prompt", request.negative_prompt)):
        tokens = len(limits.tokenizer(text).input_ids)
        if tokens > limits.tokenizer.model_max_length:
            raise BadRequest(f"{field} is {tokens} tokens; the text encoder reads {limits.tokenizer.model_max_length} "
                             "(start and end included): shorten it")
    return job
