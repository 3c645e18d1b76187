"""Hires fix (AUTOMATIC1111's `enable_hr`): an image made at its first size, upscaled, then denoised again at the
larger size from part of the schedule (img2img at `denoising_strength`), so a model trained at 512 (SD 1.5) or 1024
(SDXL) makes a larger image whose composition is its native size's, instead of the repeated subjects a direct large
generation gives.

The upscaler is A1111's: a `Latent` mode (the first pass's latents interpolated to the larger size, no decode in
between: one VAE decode in all) or a plain image resize (`None`/`Lanczos`: Lanczos, `Nearest`): the first pass
decoded, resized and encoded again by the second pass. A1111's model upscalers (ESRGAN and the like) are not served.
The second pass runs `steps` (A1111's hr_second_pass_steps; 0: the first pass's) at `strength`, so
int(steps x strength) of them (diffusers' and A1111's img2img alike). Its large decode is where memory peaks: the
tiled VAE (sdcpu.pipeline.vae_tiles) bounds it over $SDCPU_VAE_TILE pixels a side.

A family whose img2img is a reference edit (FLUX.2 klein: no strength, no partial schedule) has no hires fix.
"""

from dataclasses import dataclass

from sdcpu.errors import UsageError

# A1111's latent upscale modes -> torch interpolate's mode and antialias (modules/shared.py, latent_upscale_modes)
LATENT = {"Latent": ("bilinear", False), "Latent (antialiased)": ("bilinear", True),
          "Latent (bicubic)": ("bicubic", False), "Latent (bicubic antialiased)": ("bicubic", True),
          "Latent (nearest)": ("nearest", False), "Latent (nearest-exact)": ("nearest-exact", False)}
IMAGE = {"None": "LANCZOS", "Lanczos": "LANCZOS", "Nearest": "NEAREST"}  # A1111's plain resizes -> PIL's filters
UPSCALERS = (*LATENT, *IMAGE)
MAX_SCALE = 4.0


@dataclass(frozen=True)
class Hires:
    """The second pass: its size, upscaler (an UPSCALERS name), steps (0: the first pass's) and strength."""

    width: int
    height: int
    upscaler: str = "Latent"
    steps: int = 0
    strength: float = 0.7

    def steps_of(self, first_steps: int) -> int:
        return self.steps or first_steps

    def steps_run(self, first_steps: int) -> int:
        from sdcpu.pipeline import tasks

        return tasks.steps_run(self.steps_of(first_steps), self.strength)

    def text(self, width: int, first_steps: int) -> str:
        """Its fields in A1111's infotext (after the first pass's Size)."""
        return (f"Hires upscale: {self.width / width:g}, Hires steps: {self.steps_of(first_steps)}, "
                f"Hires upscaler: {self.upscaler}, Denoising strength: {self.strength:g}")


def planned(width: int, height: int, scale: float, resize_x: int, resize_y: int, multiple: int, *, upscaler=None,
            steps: int = 0, strength: float = 0.7) -> Hires:
    """A1111's second-pass size: WIDTH and HEIGHT times SCALE, or RESIZE_X x RESIZE_Y where given (one of them: the
    other keeps the aspect), rounded down to MULTIPLE; a UsageError for what A1111 would not make either."""
    name = upscaler or "Latent"  # A1111's default
    if name not in UPSCALERS:
        raise UsageError(f"hr_upscaler {name!r} is not served; choose from: {', '.join(UPSCALERS)}")
    if not 1 <= scale <= MAX_SCALE:
        raise UsageError(f"hr_scale {scale:g}: from 1 to {MAX_SCALE:g}")
    if resize_x and resize_y and resize_x * height != resize_y * width:
        raise UsageError(f"hr_resize {resize_x}x{resize_y}: another aspect than {width}x{height} (A1111 crops; sdcpu "
                         "does not)")
    if resize_x or resize_y:  # one side given: the other keeps the aspect
        size = resize_x or round(resize_y * width / height), resize_y or round(resize_x * height / width)
    else:
        size = int(width * scale), int(height * scale)
    size = tuple(side - side % multiple for side in size)
    if size[0] < width or size[1] < height:
        raise UsageError(f"hires fix to {size[0]}x{size[1]}: smaller than the first pass's {width}x{height}")
    if not 0 < strength <= 1:
        raise UsageError(f"denoising_strength {strength}: hires fix needs one in (0, 1]")
    if steps < 0:
        raise UsageError(f"hires steps {steps}: 0 (the first pass's) or more")
    return Hires(*size, name, steps, strength)


def first_output_type(hires: Hires) -> str:
    """What the first pass returns: latents for a latent upscaler, else images."""
    return "latent" if hires.upscaler in LATENT else "pil"


def upscaled(hires: Hires, made, factor: int):
    """The second pass's input: the first pass's latents interpolated to the second size (FACTOR pixels a latent),
    or its images resized."""
    if hires.upscaler in LATENT:
        import torch

        mode, antialias = LATENT[hires.upscaler]
        return torch.nn.functional.interpolate(made, size=(hires.height // factor, hires.width // factor), mode=mode,
                                               antialias=antialias)
    from PIL import Image

    return [image.resize((hires.width, hires.height), getattr(Image, IMAGE[hires.upscaler])) for image in made]


def decoded(pipeline, latents) -> list:
    """PIPELINE's images of LATENTS (a first pass stopped before its second), decoded as SD's and SDXL's pipelines do:
    the VAE's latents_mean/std where its config has them, else its scaling factor."""
    import torch

    config = pipeline.vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        latents = latents * torch.tensor(std).view(1, -1, 1, 1) / config.scaling_factor + torch.tensor(mean).view(
            1, -1, 1, 1)
    else:
        latents = latents / config.scaling_factor
    return pipeline.image_processor.postprocess(pipeline.vae.decode(latents, return_dict=False)[0], output_type="pil")
