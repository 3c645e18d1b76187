"""Generation on a loaded pipeline: the request, its validation and the timed call (the PNGs it writes:
sdcpu.pipeline.outputs)."""

import math
import time
from dataclasses import dataclass, replace

from sdcpu import families
from sdcpu.errors import UsageError
from sdcpu.families import sd
from sdcpu.families.base import Defaults
from sdcpu.models import state
from sdcpu.pipeline.timing import component_split, Split

RANDOM_WEIGHTS_NOTE = "weights are random (an sdcpu test model): the image is noise, only its timing is meaningful"


MIN_SIDE = 64  # a latent of 8x8: SD's UNet halves it three times
MAX_SIDE = 4096  # a 4096x4096 image: SD 1.5's attention at that size already needs tens of GiB
MAX_STEPS = 1000  # SD's training schedule has 1000 timesteps
MAX_IMAGES = 100
MAX_SEED = 2**64 - 1  # what torch.Generator.manual_seed takes


# What a request leaves unset takes, before a model is loaded to say its own (the command lines' defaults): SD's.
DEFAULTS = sd.FAMILY.defaults


def defaults_for(pipe, base: Defaults | None = None) -> Defaults:
    """The defaults of a request on PIPE: BASE (default: its model family's; bench: its protocol's) with the call
    defaults of the recipe PIPE was optimized with over it (its steps= and guidance=; lcm-lora's 4 steps at
    guidance 1)."""
    base = base or families.of(pipe).defaults_of(pipe)
    call = state.of(pipe).defaults
    return replace(base, steps=call.get("num_inference_steps", base.steps),
                   guidance=call.get("guidance_scale", base.guidance))


def spec_defaults(spec) -> Defaults:
    """The request defaults of model SPEC known before it loads (models.known_defaults: a random:ARCH's, a diffusers
    folder's, a hub model's in the local cache, a .safetensors checkpoint's); any other model's are known once loaded
    (`defaults_for`), SD's until then."""
    from sdcpu import models

    return models.known_defaults(spec) or DEFAULTS


@dataclass(frozen=True)
class Request:
    prompt: str
    negative_prompt: str = ""
    steps: int = DEFAULTS.steps
    width: int = DEFAULTS.width
    height: int = DEFAULTS.height
    seed: int = 0
    guidance: float = DEFAULTS.guidance
    num_images: int = 1

    def validate(self) -> "Request":
        """Refuse what no entry point makes, before any model loads: every bound of a request is here."""
        check_size(self.width, self.height)
        if not 1 <= self.steps <= MAX_STEPS:
            raise UsageError(f"steps must be from 1 to {MAX_STEPS}, got {self.steps}")
        if not 1 <= self.num_images <= MAX_IMAGES:
            raise UsageError(f"the number of images must be from 1 to {MAX_IMAGES}, got {self.num_images}")
        if not 0 <= self.seed <= MAX_SEED - (self.num_images - 1):
            raise UsageError(f"seed {self.seed}: image i uses seed+i, and seeds go from 0 to 2**64-1 "
                             f"({MAX_SEED}), so the first is at most {MAX_SEED - (self.num_images - 1)} here")
        if not (math.isfinite(self.guidance) and self.guidance >= 0):  # NaN would silently turn guidance off
            raise UsageError(f"guidance must be a finite number >= 0, got {self.guidance}")
        return self

    def seeds(self) -> list[int]:
        """One seed per image, so any image can be remade alone from the seed in its metadata."""
        return [self.seed + i for i in range(self.num_images)]


@dataclass(frozen=True)
class Result:
    images: list  # PIL images, in seed order
    seconds: float  # wall time of the whole pipeline call
    split: Split  # time per component

    def seconds_per_image(self) -> float:
        return self.seconds / len(self.images)

    def summary(self, steps: int) -> str:
        """'12.3 s/image: text encoder 0.1 s, denoiser 4.1 s x 3 calls, VAE decode 3.9 s' (totals of the call)."""
        parts = [f"{self.seconds_per_image():.2f} s/image"]
        if self.split.calls:
            parts.append(
                f"text encoder {self.split.seconds.get('text_encoder', 0):.2f} s, "
                f"denoiser {self.split.per_call('unet'):.3f} s x {self.split.calls.get('unet', 0)} calls, "
                f"VAE decode {self.split.seconds.get('vae', 0):.2f} s"
            )
        return ": ".join(parts) + f" ({self.seconds / steps:.3f} s per step overall)"


def check_size(width: int, height: int, max_side: int = MAX_SIDE, multiple: int = 8) -> None:
    """Refuse a size sdcpu does not make: each side a MULTIPLE of 8 (the VAE's factor; the model family's
    size_multiple, FLUX.2's 16, once known) from MIN_SIDE to MAX_SIDE (or a server's smaller bound). The one size
    check of every entry point: generate, bench, tune, serve."""
    for side, value in (("width", width), ("height", height)):
        if value % multiple or not MIN_SIDE <= value <= max_side:
            raise UsageError(f"size {width}x{height}: {side} {value}: must be a multiple of {multiple} from {MIN_SIDE} "
                             f"to {max_side}")


def check_hires(hires, family, edit, steps: int, max_side: int | None = None) -> None:
    """Refuse a hires fix (a hires.Hires) where it cannot run: an edit (text-to-image only, as A1111's), a reference-edit family, a
    second size over MAX_SIDE (default generate's) or not the family's multiple, second-pass steps that run none (of
    a first pass of STEPS)."""
    from sdcpu.pipeline import tasks

    if hires is None:
        return
    if edit is not None:
        raise UsageError("hires fix is text-to-image's second pass: not with an input image")
    if family.reference_edits:
        raise UsageError(f"{family.name} models have no hires fix: their img2img is a reference edit, without the "
                         "strength a second pass needs")
    check_size(hires.width, hires.height, max_side or MAX_SIDE, family.size_multiple)
    tasks.check_steps(hires.steps_of(steps), hires.strength)


def fitted_size(width: int, height: int, max_side: int = MAX_SIDE, multiple: int = 8) -> tuple[int, int]:
    """The size an image of WIDTHxHEIGHT is edited at when a request names none: its own, scaled down to fit MAX_SIDE
    (its aspect ratio kept) and each side rounded down to a MULTIPLE of 8 (the family's size_multiple), as diffusers
    rounds a size it is given (an edit of a 1000x750 photo is made at 1000x744; of a 4032x3024 one on a server of
    --max-size 1024, at 1024x768)."""
    scale = min(1.0, max_side / max(width, height))
    return int(width * scale) // multiple * multiple, int(height * scale) // multiple * multiple


def check_tokens(tokenizer, request: Request) -> None:
    """Refuse a prompt longer than the text encoder reads (the pipeline would silently drop its end): checked once
    the tokenizer is loaded, before any compute."""
    for field, text in (("prompt", request.prompt), ("negative prompt", request.negative_prompt)):
        tokens = len(tokenizer(text).input_ids)
        if tokens > tokenizer.model_max_length:
            raise UsageError(f"the {field} is {tokens} tokens; the text encoder reads {tokenizer.model_max_length} "
                             "(start and end included): shorten it")


def parse_size(text: str) -> tuple[int, int]:
    """'512x768' -> (512, 768): width first, like every image tool; ASCII digits only (int() also reads other
    scripts' digits), at most 5 a side."""
    parts = text.lower().split("x")  # ^[0-9]{1,5}x[0-9]{1,5}$
    if len(parts) != 2 or not all(part.isascii() and part.isdigit() and len(part) <= 5 for part in parts):
        raise UsageError(f"size {text[:20]!r}: expected WIDTHxHEIGHT, e.g. 512x512")
    width, height = map(int, parts)
    return width, height


def run(pipe, request: Request, edit=None, hires=None, control=None) -> Result:
    """Generate REQUEST's images with PIPE (from EDIT's image and mask: img2img or inpainting; with HIRES a hires
    fix's second pass; steered by CONTROL's ControlNet); the whole call is timed with perf_counter."""
    return run_batch(pipe, [request], edit, hires=hires, control=control)


def run_batch(pipe, requests: list[Request], edit=None, on_step=None, keep_prompts: bool = False,
              hires=None, control=None) -> Result:
    """REQUESTS (same size, steps and guidance) in one pipeline call, one prompt per image: the images come in request
    order, each from its own seed's generator, so a request's images are those it gets alone (up to float rounding).
    EDIT (a tasks.Edit) makes it img2img or inpainting, on the same components. ON_STEP(step_index, steps_run,
    latents) is called after each denoising step (diffusers' callback_on_step_end); when it returns True the call
    stops there (diffusers' interrupt) and the images are decoded from the latents it has. KEEP_PROMPTS (a server's
    worker): where the family keeps prompts' states (Family.prompt_cache), a prompt seen lately skips the text
    encoder. HIRES (a hires.Hires): text-to-image's second pass at its larger size (ON_STEP counts both passes' steps
    as one schedule). CONTROL (a control.Control): its ControlNet steers each pass."""
    import torch

    from sdcpu.pipeline import control as controls, hires as hires_fix, tasks, vae_tiles

    first = requests[0]
    family = families.of(pipe)
    check_size(first.width, first.height, multiple=family.size_multiple)
    edit = tasks.for_family(edit, family)
    check_hires(hires, family, edit, first.steps)
    if not family.negative_prompt and any(r.negative_prompt for r in requests):
        raise UsageError(f"{family.name} models take no negative prompt ({family.pipelines['txt2img']} has none)")
    if any((r.width, r.height, r.steps, r.guidance) != (first.width, first.height, first.steps, first.guidance)
           for r in requests):
        raise ValueError("a batch shares its size, steps and guidance")
    prompts = [r.prompt for r in requests for _ in r.seeds()]
    negatives = [r.negative_prompt for r in requests for _ in r.seeds()]
    generators = [torch.Generator("cpu").manual_seed(seed) for r in requests for seed in r.seeds()]
    task = edit.task if edit else "txt2img"
    net = control and controls.controlnet(pipe, control.kind, control.source)
    target = tasks.pipeline_for(pipe, task, net)
    size = {} if edit and edit.task == "img2img" and not edit.by_reference else {"width": first.width,
                                                                                  "height": first.height}
    sized = edit and edit.sized(first.width, first.height)  # once: the call's input and its paste-back

    second = hires.steps_run(first.steps) if hires else 0  # the second pass's steps, counted after the first's
    done = [0]  # steps of the passes before this one

    def step_end(pipeline, index, timestep, tensors):
        if on_step(done[0] + index, done[0] + pipeline.num_timesteps + (second if not done[0] else 0),
                   tensors["latents"]):
            pipeline._interrupt = True  # diffusers skips the remaining steps, then decodes
        return tensors

    def call(pipeline, steps, **arguments):
        return pipeline(
            **(_prompt_arguments(pipe, pipeline, family, prompts) if keep_prompts and family.prompt_cache else
               {"prompt": prompts}),  # by name: FLUX.2's pipeline takes its reference images first
            **({"negative_prompt": negatives if any(negatives) else None} if family.negative_prompt else {}),
            num_inference_steps=steps,
            guidance_scale=first.guidance,
            generator=generators,
            **arguments,
            **({} if on_step is None else {"callback_on_step_end": step_end}),
        )

    pipe.vae.enable_slicing()  # the images decoded one at a time: n 1024x1024 images need one image's VAE memory
    start = time.perf_counter()
    # and an image over $SDCPU_VAE_TILE pixels a side a tile at a time; the split times the tiled decode as one
    output_type = hires_fix.first_output_type(hires) if hires else "pil"
    with torch.inference_mode(), vae_tiles.tiled(pipe.vae), component_split(pipe) as split:
        output = call(target, first.steps, **size, **tasks.call_arguments(sized, first.steps, len(prompts)),
                      **(control.arguments(task, first.width, first.height) if control else {}),
                      output_type=output_type)
        if hires and getattr(target, "_interrupt", False):  # stopped in its first pass: no second
            images = output.images if output_type == "pil" else hires_fix.decoded(target, output.images)
        elif hires:
            done[0] = target.num_timesteps
            again = tasks.pipeline_for(pipe, "img2img", net)
            images = call(again, hires.steps_of(first.steps), strength=hires.strength,
                          image=hires_fix.upscaled(hires, output.images, pipe.vae_scale_factor),
                          **(control.arguments("img2img", hires.width, hires.height) if control else {})).images
        else:
            images = tasks.pasted_back(target, sized, output.images)
    return Result(images=images, seconds=time.perf_counter() - start, split=split)


def _prompt_arguments(pipe, target, family, prompts: list[str]) -> dict:
    """PROMPTS' states as the call's `prompt_embeds`, each prompt encoded by TARGET once and kept (on PIPE's state)
    for the next prompt_cache distinct prompts of its family, the least recently used dropped first."""
    import torch

    kept = state.of(pipe).prompt_states
    missing = [prompt for prompt in dict.fromkeys(prompts) if prompt not in kept]
    if missing:
        kept.update(zip(missing, family.encode(target, missing)))
    states = torch.stack([kept[prompt] for prompt in prompts])
    for prompt in dict.fromkeys(prompts):
        kept[prompt] = kept.pop(prompt)  # most recently used last
    while len(kept) > family.prompt_cache:
        kept.pop(next(iter(kept)))
    return {"prompt_embeds": states}
