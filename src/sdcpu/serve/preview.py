"""Previews of a generation in progress: the latents of a step decoded cheaply, for /sdapi/v1/progress's current_image
and OpenAI's streamed partial images.

The decoder, chosen once per pipeline and loaded while `sdcpu serve` warms up (so the first preview pays no load):
- the model family's own decoder where the others cannot read its latents (FLUX.2's VAE: Family.own_preview);
- the pipeline's own VAE when it already is TAESD (diffusers' AutoencoderTiny: the `tiny-vae` step);
- TAESD: a `random:` model's random-weight one (built offline), else the model family's TAESD if it is in the hub cache;
- else A1111's "Approx cheap": the family's fixed linear map of latent channels to RGB, at the latent's size, upscaled.

The progress routes' previews are `Shared`: however many clients poll, an image of a call is decoded at most once a
step and at most once every `PROGRESS_SECONDS`; the polls in between get the last one decoded.
"""

import logging
import threading
import time
from dataclasses import dataclass

from sdcpu import families
from sdcpu.models import state

log = logging.getLogger(__name__)

_MADE = threading.Lock()
PROGRESS_SECONDS = 0.5  # the least time between two decodes of a progress preview (A1111's UIs poll every 0.5-1 s)


def previewer(pipe) -> "Previewer":
    """PIPE's Previewer, made (its decoder loaded) on the first call and kept on PIPE."""
    with _MADE:
        made = state.of(pipe)
        if made.previewer is None:
            made.previewer = Previewer(pipe)
    return made.previewer


class Previewer:
    def __init__(self, pipe):
        self.pipe = pipe
        self.source, self._decode = _decoder(pipe)  # what decodes the previews, and how

    def images(self, latents, width: int, height: int) -> list:
        """LATENTS (a step's, as the UNet sees them) as PIL images of WIDTHxHEIGHT."""
        import torch

        with torch.inference_mode():
            pixels = self._decode(latents.float(), width, height).clamp(-1, 1)
        return [image.resize((width, height)) for image in self.pipe.image_processor.postprocess(pixels)]


@dataclass(frozen=True)
class Shown:
    """A progress preview decoded: of which call (its queue.Running) and image, after which step, when, its PNG."""

    call: object
    image: int
    step: int
    at: float
    png: str


class Shared:
    """The progress previews the pollers of a call share: `shown` decodes an image again only once its call has taken
    a step since, and SECONDS have passed since its last decode; one poller decodes, the others wait for its PNG."""

    def __init__(self, decode, seconds: float = PROGRESS_SECONDS):
        """DECODE(latents of one image, width, height) -> base64 PNG."""
        self._decode, self.seconds = decode, seconds
        self._lock = threading.Lock()
        self._shown: dict[int, Shown] = {}  # by image index, of the last call previewed only

    def shown(self, call, image: int, step: int, latents, width: int, height: int) -> Shown:
        """The preview of image IMAGE of CALL (LATENTS: the call's, after STEP), a base64 PNG of WIDTHxHEIGHT, the
        last one decoded when it is recent enough; blocking: call it in a thread."""
        with self._lock:
            last = self._shown.get(image)
            if last is None or last.call is not call:
                self._shown = {key: shown for key, shown in self._shown.items() if shown.call is call}
            elif last.step == step or time.monotonic() - last.at < self.seconds:
                return last
            png = self._decode(latents[image:image + 1], width, height)
            shown = self._shown[image] = Shown(call, image, step, time.monotonic(), png)
            return shown


def _decoder(pipe):
    """(what it is, (latents, width, height) -> pixels in [-1, 1])."""
    import torch
    from diffusers import AutoencoderTiny

    if (own := families.of(pipe).own_preview(pipe)) is not None:
        return f"the {families.of(pipe).name} family's own decoder", own
    if isinstance(pipe.vae, AutoencoderTiny):
        vae = pipe.vae
        return "the pipeline's TAESD", lambda latents, *size: vae.decode(latents.to(vae.dtype)).sample.float()
    model = state.of(pipe).model
    try:
        if model is not None and model.random_weights:
            from sdcpu.models import random_models

            source, path = "random-weight TAESD", random_models.ensure_tiny_vae(pipe.vae_scale_factor)
        else:
            source = path = families.of(pipe).tiny_vae
        vae = AutoencoderTiny.from_pretrained(path, local_files_only=True).eval()
        log.info("previews: %s", source)
        return source, lambda latents, *size: vae.decode(latents).sample
    except Exception as err:  # noqa: BLE001 - not in the cache, offline: the weightless approximation serves
        log.info("previews: approx cheap (no TAESD: %s)", type(err).__name__)
    coefficients = torch.tensor(families.of(pipe).latent_rgb)
    return "approx cheap", lambda latents, *size: torch.einsum("bchw,cr->brhw", latents, coefficients)
