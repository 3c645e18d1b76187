"""Hires fix (sdcpu.pipeline.hires) on random:tiny: A1111's second-pass sizes, both kinds of upscaler through
generate.run_batch, the steps of both passes counted as one schedule, a stop in the first pass, and what is refused."""

import re

import numpy as np
import pytest
from PIL import Image

from sdcpu.errors import UsageError
from sdcpu.families import flux2, sd
from sdcpu.models import schedulers
from sdcpu.pipeline import generate, hires, outputs, tasks

REQUEST = generate.Request("a red cat", steps=4, width=64, height=64, seed=3, guidance=1.0)


@pytest.mark.parametrize("scale, resize, expected", [
    (2.0, (0, 0), (128, 96)),  # width x height times the scale
    (1.5, (0, 0), (96, 72)),
    (1.7, (0, 0), (104, 80)),  # 108.8 x 81.6, each rounded down to a multiple of 8 (A1111 truncates too)
    (2.0, (128, 0), (128, 96)),  # one side given: the other keeps the aspect
    (2.0, (0, 144), (192, 144)),
    (2.0, (100, 0), (96, 72)),  # 100 x 75 from the aspect, each side then rounded down to a multiple of 8
])
def test_the_second_size_is_a1111s(scale, resize, expected):
    made = hires.planned(64, 48, scale, *resize, 8)
    assert (made.width, made.height) == expected and made.upscaler == "Latent"  # A1111's default upscaler


@pytest.mark.parametrize("arguments, message", [
    (dict(scale=2.0, upscaler="R-ESRGAN 4x+"), "hr_upscaler 'R-ESRGAN 4x+' is not served"),
    (dict(scale=5.0), "hr_scale 5: from 1 to 4"),
    (dict(scale=2.0, resize=(100, 100)), "another aspect than 64x48"),
    (dict(scale=2.0, strength=0.0), "needs one in (0, 1]"),
])
def test_what_a1111_would_not_make_is_one_line(arguments, message):
    resize = arguments.pop("resize", (0, 0))
    scale = arguments.pop("scale")
    with pytest.raises(UsageError, match=re.escape(message)):
        hires.planned(64, 48, scale, *resize, 8, **arguments)


def test_an_edit_or_a_reference_edit_family_has_no_hires_fix():
    second = hires.Hires(128, 128)
    with pytest.raises(UsageError, match="text-to-image's second pass"):
        generate.check_hires(second, sd.FAMILY, tasks.Edit(image=Image.new("RGB", (64, 64))), 20)
    with pytest.raises(UsageError, match="flux2 models have no hires fix"):
        generate.check_hires(second, flux2.FAMILY, None, 4)


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_a_second_pass_refines_the_first_at_the_larger_size(tiny, monkeypatch, upscaler):
    pipe = tiny()
    schedulers.set_scheduler(pipe, "euler")  # one timestep a step (random:tiny's PNDM adds one to each pass)
    first = generate.run(pipe, REQUEST).images[0]
    handed = []
    upscaled = hires.upscaled
    monkeypatch.setattr(hires, "upscaled", lambda *args: handed.append((args[1], upscaled(*args))) or handed[-1][1])
    seen = []
    second = hires.Hires(128, 128, upscaler, steps=4, strength=0.5)
    made = generate.run_batch(pipe, [REQUEST], on_step=lambda index, total, latents: seen.append(
        (index, total, tuple(latents.shape[-2:]))) and False, hires=second).images[0]
    assert made.size == (128, 128)
    # 4 steps of the first pass, then int(4 x 0.5) of the second at twice the latent size, counted as one schedule
    factor = pipe.vae_scale_factor
    small, large = (64 // factor,) * 2, (128 // factor,) * 2
    assert seen == [(0, 6, small), (1, 6, small), (2, 6, small), (3, 6, small), (4, 6, large), (5, 6, large)]
    # the second pass starts from the first pass's own result, upscaled: its latents, or the very image a plain call
    # makes (random weights make the images noise, so what they look like proves nothing)
    [(given, handed_on)] = handed
    if upscaler == "Latent":
        assert tuple(given.shape[-2:]) == small and tuple(handed_on.shape[-2:]) == large
    else:
        assert given[0].tobytes() == first.tobytes() and handed_on[0].size == (128, 128)


def test_a_stop_in_the_first_pass_answers_its_image_without_a_second(tiny):
    pipe = tiny()
    for upscaler in ("Latent", "Nearest"):
        made = generate.run_batch(pipe, [REQUEST], on_step=lambda index, total, latents: index == 1,
                                  hires=hires.Hires(128, 128, upscaler)).images[0]
        assert made.size == (64, 64), upscaler


def test_the_infotext_has_a1111s_hires_fields():
    text = outputs.parameters_text(REQUEST, 3, model="random:tiny", random_weights=True, scheduler="euler",
                                   recipe="baseline", hires=hires.Hires(128, 128, "Latent", 0, 0.55))
    assert "Size: 64x64, Hires upscale: 2, Hires steps: 4, Hires upscaler: Latent, Denoising strength: 0.55," in text


@pytest.mark.parametrize("upscaler", ["Latent (nearest-exact)", "Nearest"])
def test_sdxl_takes_the_second_pass_too(upscaler):
    """SDXL's img2img takes the first pass's latents as they are (4 channels) or its resized image."""
    from sdcpu import load_pipeline

    pipe = load_pipeline("random:tiny-sdxl")
    made = generate.run_batch(pipe, [REQUEST], hires=hires.Hires(96, 128, upscaler, steps=2, strength=0.5))
    assert made.images[0].size == (96, 128)
