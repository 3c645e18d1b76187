"""ControlNet: a control image steers where things go. Its ControlNet (a trained copy of the UNet's encoder) reads the
control map beside the noisy latents at every step and adds its residuals to the UNet's skip connections.

Two control types: `canny` (edges: the map is made here from any photo by Canny's detector, A1111's thresholds 100
and 200 by default; a map already made is taken as it is with `preprocess` off) and `depth` (a depth map, given: no
depth estimator is bundled). The control map meets the image's size by one of A1111's resize modes (RESIZES).

The ControlNet is a component of the pipeline, loaded once per type and kept on it: the family's ControlNet for the
type (Family.controlnets: hub ids, from the hub cache, never a pickle) or the one a caller names; a `random:` model
gets a random-weight replica of the family's ControlNet architecture, built offline from its UNet's config (diffusers'
ControlNetModel.from_unet: the encoder, its zero convolutions and the 16-32-96-256 conditioning embedding of
lllyasviel's and diffusers' ControlNets). It runs where the UNet runs: in eager torch beside the eager UNet, or on
OpenVINO beside OpenVINO's, both converted the first time (sdcpu.backends.openvino_control); inductor's graph, the
quantized UNets and IPEX's take no residuals, nor does DeepCache's forward: a control is refused with the reason where
the recipe has one of them (StepKind.control).
"""

from dataclasses import dataclass

from sdcpu import families
from sdcpu.errors import UsageError
from sdcpu.models import state

KINDS = ("canny", "depth")
MAX_SCALE = 2.0  # A1111's control weight slider maximum
CANNY = (100, 200)  # A1111's canny thresholds (low, high)
# how a map of another shape meets the image's size (A1111's resize modes): stretched, cropped to the image's aspect
# about its centre, or fitted inside it with black (no edges, nothing near) around
RESIZES = {"just": lambda image, size: image.resize(size),
           "crop": lambda image, size: _ops().fit(image, size),
           "fill": lambda image, size: _ops().pad(image, size, color=(0, 0, 0))}
EMBEDDING = (16, 32, 96, 256)  # the real ControlNets' map embedding: three stride-2 stages, an 8x downsampling
# the outputs a ControlNet starts training from at zero: its residuals' convolutions and its map embedding's last one
ZERO_CONVOLUTIONS = ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")


@dataclass(frozen=True, eq=False)
class Control:
    """A control map and how strongly (SCALE) and over which share of the steps (START to END) it steers."""

    image: object  # PIL RGB: the control map
    kind: str  # one of KINDS
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    source: str | None = None  # a ControlNet's hub id or folder; None: the family's for KIND
    resize: str = "just"  # how the map meets the image's size: one of RESIZES

    def text(self) -> str:
        """A1111's ControlNet extension's infotext of it."""
        return (f"Module: {self.kind}, Model: {self.source or 'the family ' + self.kind + ' ControlNet'}, "
                f"Weight: {self.scale:g}, Guidance Start: {self.start:g}, Guidance End: {self.end:g}")

    def arguments(self, task: str, width: int, height: int) -> dict:
        """The pipeline-call arguments for the images of WIDTHxHEIGHT of TASK (one control image conditions each;
        diffusers names it `image` where the task has no other)."""
        sized = RESIZES[self.resize](self.image, (width, height))
        name = "image" if task == "txt2img" else "control_image"
        return {name: sized, "controlnet_conditioning_scale": self.scale, "control_guidance_start": self.start,
                "control_guidance_end": self.end}


def control(data: bytes, kind: str, scale: float = 1.0, *, preprocess: bool = True, thresholds=CANNY,
            start: float = 0.0, end: float = 1.0, source: str | None = None, resize: str = "just") -> Control:
    """A Control from an uploaded image DATA, checked (UsageError, one line); a canny one's edges made here unless
    PREPROCESS is off."""
    from sdcpu.pipeline import tasks

    if kind not in KINDS:
        raise UsageError(f"control type {kind!r}: sdcpu runs {', '.join(KINDS)}")
    if not 0 <= scale <= MAX_SCALE:
        raise UsageError(f"control scale {scale:g}: from 0 to {MAX_SCALE:g}")
    if not 0 <= start < end <= 1:
        raise UsageError(f"control steps from {start:g} to {end:g}: give 0 <= start < end <= 1 (shares of the steps)")
    low, high = thresholds
    if not 1 <= low <= high <= 255:
        raise UsageError(f"canny thresholds {low:g} and {high:g}: give 1 <= low <= high <= 255")
    image = tasks.decode(data, "control image").convert("RGB")
    return Control(canny(image, low, high) if kind == "canny" and preprocess else image, kind, scale, start, end,
                   source, resize)


def canny(image, low: float = CANNY[0], high: float = CANNY[1]):
    """IMAGE's edges (white on black, RGB) by Canny's detector as OpenCV's Canny computes it on 8-bit gray: Sobel
    gradients (L1 magnitude), non-maximum suppression along the gradient's direction, hysteresis between LOW and
    HIGH."""
    import numpy as np
    from PIL import Image
    from scipy import ndimage

    gray = np.asarray(image.convert("L"), dtype=np.float32)
    gx, gy = ndimage.sobel(gray, axis=1), ndimage.sobel(gray, axis=0)
    magnitude = np.abs(gx) + np.abs(gy)
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180) % 180  # the gradient's direction, 0-180 degrees
    sector = ((angle + 22.5) // 45).astype(int) % 4  # 0: horizontal, 1: 45, 2: vertical, 3: 135 degrees
    padded = np.pad(magnitude, 1)
    rows, cols = gray.shape
    neighbours = {0: ((0, 1), (0, -1)), 1: ((1, 1), (-1, -1)), 2: ((1, 0), (-1, 0)), 3: ((1, -1), (-1, 1))}
    peak = np.zeros_like(magnitude, dtype=bool)
    for index, ((dy1, dx1), (dy2, dx2)) in neighbours.items():
        one = padded[1 + dy1:1 + dy1 + rows, 1 + dx1:1 + dx1 + cols]
        two = padded[1 + dy2:1 + dy2 + rows, 1 + dx2:1 + dx2 + cols]
        peak |= (sector == index) & (magnitude >= one) & (magnitude > two)
    strong, weak = peak & (magnitude > high), peak & (magnitude > low)
    regions, _ = ndimage.label(weak, structure=np.ones((3, 3)))
    kept = np.isin(regions, np.unique(regions[strong]))
    edges = (kept & weak).astype(np.uint8) * 255
    return Image.fromarray(edges).convert("RGB")


def refusal(family, recipe) -> str | None:
    """Why a ControlNet cannot steer a model of FAMILY optimized by RECIPE (None: it can): the family has none, a
    step of the recipe leaves a UNet that takes no residuals (StepKind.control), or the weights step compresses the
    OpenVINO IR whose residual-taking twin the ControlNet needs."""
    from sdcpu.recipes import STEP_KINDS

    if not family.controlnets:
        return f"{family.summary}: sdcpu runs no ControlNet for this family"
    steps = recipe.steps if recipe else ()
    blocking = [str(step) for step in steps if not STEP_KINDS[step.name].control]
    names, stored = [step.name for step in steps], recipe.get("weights") if recipe else None
    if stored and stored.value != "bf16" and "openvino" in names and names.index("weights") > names.index("openvino"):
        return (f"a ControlNet steers the {family.denoiser.label}'s own OpenVINO IR, and recipe {recipe} compresses "
                f"its weights (weights={stored.value} after openvino): drop weights= (e.g. --recipe openvino)")
    if blocking:
        without = ", ".join(name for name, kind in STEP_KINDS.items() if not kind.control)
        return (f"a ControlNet adds its residuals to the UNet, and recipe {recipe} has {', '.join(blocking)}, whose "
                f"UNet takes none: use a recipe without {without} (e.g. --recipe baseline, or openvino)")
    # OpenVINO's UNet taking residuals is converted again from the model's own files (backends/openvino_control.py):
    # what changed the UNet before the backend converted it would be missing from it
    changed = [str(step) for step in steps if STEP_KINDS[step.name].role in ("before_backend", "eager")
               or step.name == "bf16"]
    if changed and any(step.name == "openvino" for step in steps):
        return (f"a ControlNet on OpenVINO converts the model's own UNet again, without {', '.join(changed)} of "
                f"recipe {recipe}: drop {'it' if len(changed) == 1 else 'them'}, or use --recipe baseline")
    return None


def controlnet(pipe, kind: str, source: str | None = None):
    """PIPE's ControlNet for KIND (from SOURCE, else its family's), loaded once and kept on PIPE; UsageError (refusal)
    where it cannot steer PIPE's UNet."""
    from diffusers import ControlNetModel

    family, shared = families.of(pipe), state.of(pipe)
    if reason := refusal(family, shared.recipe):
        raise UsageError(reason)
    random = shared.model is not None and shared.model.random_weights
    key, openvino = (kind, source), shared.runtime is state.Runtime.OPENVINO
    if openvino:  # its UNet is a stand-in: the replica, and the IR taking residuals, need the torch module
        from sdcpu.backends import openvino_control
    if key not in shared.controlnets:
        unet = openvino_control.torch_unet(pipe) if openvino and source is None and random else pipe.unet
        if source is None and random:
            made = _replica(unet, pipe.vae_scale_factor)
        else:
            name = source or family.controlnets[kind]
            try:
                made = ControlNetModel.from_pretrained(name, use_safetensors=True)
            except Exception as err:  # noqa: BLE001 -- hub, network or format: the control cannot run
                raise UsageError(f"cannot load the {kind} ControlNet {name!r} ({type(err).__name__}: download it "
                                 "once, or give a folder)") from None
        if made.dtype != unet.dtype:  # (to() warns even where it casts nothing)
            made = made.to(dtype=unet.dtype)
        made = made.eval()
        if openvino:  # its stand-in running its IR: the torch module is dropped
            made = openvino_control.attach(pipe, made, unet if unet is not pipe.unet else None)
        shared.controlnets[key] = made
    if openvino:
        openvino_control.check(pipe)
    return shared.controlnets[key]


def _replica(unet, vae_scale: int):
    """A random-weight ControlNet of UNET's architecture (a random: model's), the same for the same UNet: the UNet's
    encoder weights copied, as training starts; the map's embedding downsamples by the VAE's factor VAE_SCALE (8: the
    four stages of the real ControlNets; a test-size model's VAE may scale by less)."""
    import torch
    from diffusers import ControlNetModel

    with torch.random.fork_rng():  # the layers not copied from the UNet (the map's embedding) drawn from seed 0: the
        torch.manual_seed(0)  # same replica in every process and call, the caller's random state untouched
        made = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=EMBEDDING[:vae_scale.bit_length()])
    latent = unet.config.out_channels
    if made.conv_in.in_channels != latent:  # an inpainting UNet's 9 inputs: a ControlNet reads the latents alone (the
        conv = made.conv_in  # real ones are made from the base model): the latents' 4 of the UNet's weights
        made.conv_in = torch.nn.Conv2d(latent, conv.out_channels, conv.kernel_size, padding=conv.padding)
        with torch.no_grad():
            made.conv_in.weight.copy_(conv.weight[:, :latent])
            made.conv_in.bias.copy_(conv.bias)
        made.register_to_config(in_channels=latent)
    seeded = torch.Generator().manual_seed(0)
    for name, parameter in made.named_parameters():  # zero convolutions, zero until trained: seeded noise of a
        if name.startswith(ZERO_CONVOLUTIONS):  # plain layer's scale, so the replica steers as a trained one does
            fan_in = parameter[0].numel() if parameter.dim() > 1 else 1  # (and costs the same)
            with torch.no_grad():
                torch.nn.init.normal_(parameter, std=fan_in**-0.5 / 4, generator=seeded)
    return made


def _ops():
    from PIL import ImageOps

    return ImageOps
