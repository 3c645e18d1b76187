"""img2img and inpainting on random:tiny: the input checks, what the mask means, the recipe steps under each task,
the CLI and the PNG's record of the task."""

import io

import numpy as np
import pytest
from PIL import Image

from images import REMADE_ALONE_LEVELS, level_difference, png_claiming
from sdcpu import families, load_pipeline, optimize
from sdcpu.cli import main
from sdcpu.errors import UsageError
from sdcpu.pipeline import generate, tasks

SIZE = 64


def png(image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def picture(seed=1, size=(SIZE, SIZE)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def mask(white: bool, size=(SIZE, SIZE)) -> Image.Image:
    return Image.new("L", size, 255 if white else 0)


def make(pipe, prompt="a sailing ship", edit=None, steps=2):
    request = generate.Request(prompt, steps=steps, width=SIZE, height=SIZE).validate()
    return generate.run(pipe, request, edit).images[0]


@pytest.fixture(scope="module")
def pipe(tiny):
    return tiny()


def test_img2img_depends_on_the_image_and_on_strength(pipe):
    one, two = (tasks.edit(png(picture(seed)), strength=0.5) for seed in (1, 2))
    first = make(pipe, edit=one)
    assert first.size == (SIZE, SIZE)
    assert level_difference(first, make(pipe, edit=one)) <= REMADE_ALONE_LEVELS  # the same input: the same image
    assert level_difference(first, make(pipe, edit=two)) > 20  # another input image: another image
    stronger = tasks.edit(png(picture(1)), strength=1.0)
    assert level_difference(first, make(pipe, edit=stronger)) > 20


def test_inpainting_repaints_white_and_keeps_black(pipe):
    """A mask white on its left half, black on its right, with a plain (4-channel) UNet: the kept half's latents are
    the image's at every step, so another prompt changes only the left half. Measured: left 28 levels apart, right 1
    (8 pixels away from the edge, past the VAE decoder's reach across it)."""
    half = Image.new("L", (SIZE, SIZE), 0)
    half.paste(255, (0, 0, SIZE // 2, SIZE))
    edit = tasks.edit(png(picture()), png(half), strength=1.0)
    assert edit.task == "inpaint"
    ship, house = (np.asarray(make(pipe, prompt, edit), dtype=np.int16) for prompt in ("a ship", "a red house"))
    assert np.abs(ship[:, : SIZE // 2 - 8] - house[:, : SIZE // 2 - 8]).max() > 10
    assert np.abs(ship[:, SIZE // 2 + 8:] - house[:, SIZE // 2 + 8:]).max() <= REMADE_ALONE_LEVELS


def test_an_inpainting_unet_inpaints_and_refuses_text_to_image():
    inpainting = load_pipeline("random:tiny-inpainting")
    assert inpainting.unet.config.in_channels == 9 and families.of(inpainting).inpainting(inpainting)
    edit = tasks.edit(png(picture()), png(mask(True)), strength=1.0)
    assert make(inpainting, edit=edit).size == (SIZE, SIZE)
    with pytest.raises(UsageError, match="inpainting one \\(9 input channels\\)"):
        make(inpainting)


def test_openvino_compiles_the_nine_channel_unet_and_int8_says_why_it_cannot():
    inpainting = load_pipeline("random:tiny-inpainting")
    _, outcomes = optimize(inpainting, "openvino=f32,int8")
    assert outcomes[0].applied and not outcomes[1].applied and "inpainting UNet" in outcomes[1].detail
    edit = tasks.edit(png(picture()), png(mask(True)), strength=1.0)
    assert make(inpainting, edit=edit).size == (SIZE, SIZE)
    assert {shapes[0][1] for shapes in inpainting.unet.run.by_shape} == {9}  # compiled for 9 input channels


def test_the_three_tasks_share_one_set_of_weights(pipe):
    img2img, inpaint = tasks.pipeline_for(pipe, "img2img"), tasks.pipeline_for(pipe, "inpaint")
    assert img2img.unet is pipe.unet and inpaint.vae is pipe.vae and inpaint.text_encoder is pipe.text_encoder
    assert tasks.pipeline_for(pipe, "img2img") is img2img  # made once


# Each recipe step under img2img and inpainting (compile and int8 compile or calibrate for minutes: slow, below).
# bf16 is applied only where the CPU has it natively, else skipped with that reason: either outcome is checked.
STEPS_UNDER_TASKS = ["openvino=f32", "tiny-vae", "deepcache=2", "tome", "lcm-lora", "channels_last", "bf16",
                     "scheduler=dpm++"]


def check_tasks_under(stepped, recipe: str, applied: bool = True) -> None:
    """On a fresh pipeline STEPPED, RECIPE's steps applied (or, where APPLIED is False, skipped with a reason), then
    img2img and inpainting each make an image of the right size; OpenVINO converts the VAE encoder on the first call
    that needs it."""
    _, outcomes = optimize(stepped, recipe)
    for outcome in outcomes:
        assert outcome.applied or (not applied and outcome.detail), outcome
    image = png(picture())
    for edit in (tasks.edit(image, strength=0.6), tasks.edit(image, png(mask(True)), strength=1.0)):
        made = make(stepped, edit=edit, steps=2 if "lcm-lora" not in recipe else 4)
        assert made.size == (SIZE, SIZE) and np.asarray(made).std() > 0  # a picture, not a blank
    if "openvino" in recipe:
        assert stepped.vae.encode_run.compiled is not None  # the encoder ran on OpenVINO, not on torch


@pytest.mark.parametrize("recipe", STEPS_UNDER_TASKS)
def test_every_task_runs_under_a_recipe_step(recipe, tiny):
    check_tasks_under(tiny(), recipe, applied=recipe != "bf16")


@pytest.mark.slow  # compile and int8 compile or calibrate for minutes on 2 cores
@pytest.mark.parametrize("recipe", ["compile", "openvino=f32,int8", "lcm-lora,openvino=f32"])
def test_every_task_runs_under_a_compiling_or_quantizing_recipe(recipe, tiny):
    check_tasks_under(tiny(), recipe)


def test_deepcache_restarts_its_schedule_for_each_img2img_image(pipe, tiny):
    """img2img starts mid-schedule: DeepCache's first UNet call of each image must be a full one, so the same input
    makes the same image twice (a stale cache from the first call would change the second), and the shallow calls
    make it differ from the exact image."""
    cached = tiny()
    optimize(cached, "deepcache=2")
    edit = tasks.edit(png(picture()), strength=0.75)
    first = make(cached, edit=edit, steps=4)
    assert level_difference(first, make(cached, edit=edit, steps=4)) <= REMADE_ALONE_LEVELS
    assert level_difference(first, make(pipe, edit=edit, steps=4)) > REMADE_ALONE_LEVELS


def test_openvino_img2img_is_the_eager_image(pipe, tiny):
    """OpenVINO f32 on every component, the encoder included: the eager image to float rounding (test_openvino's
    bound for f32, in 8-bit levels: 1e-4 of full scale is below one level)."""
    converted = tiny()
    optimize(converted, "openvino=f32")
    edit = tasks.edit(png(picture()), strength=0.6)
    assert level_difference(make(converted, edit=edit), make(pipe, edit=edit)) <= 1


@pytest.mark.parametrize("data, message", [
    (b"not an image", "image: not an image sdcpu can read"),
    (png(picture())[:200], "image: a broken image"),
])
def test_a_bad_input_image_is_one_clear_error(data, message):
    with pytest.raises(UsageError, match=message):
        tasks.edit(data)


def test_an_oversized_header_is_refused_before_decoding():
    """A PNG claiming 40000x40000 pixels: refused from its header, never decoded (1.6 G pixels, 4.8 GB)."""
    with pytest.raises(UsageError, match="more than the 16777216 pixels accepted"):
        tasks.edit(png_claiming(40000, 40000))


def test_a_mask_of_another_size_and_a_bad_strength_are_refused():
    with pytest.raises(UsageError, match="mask: 32x32, not the image's 64x64"):
        tasks.edit(png(picture()), png(mask(True, (32, 32))))
    with pytest.raises(UsageError, match="strength must be in \\(0, 1\\]"):
        tasks.edit(png(picture()), strength=0)


def test_cli_img2img_writes_the_task_into_the_png(tmp_path, capsys):
    source = tmp_path / "in.png"
    picture().save(source)
    out = tmp_path / "out.png"
    assert main(["generate", "a ship", "--model", "random:tiny", "--recipe", "baseline", "--size", "64x64",
                 "--steps", "2", "--image", str(source), "--strength", "0.5", "-o", str(out)]) == 0
    assert "img2img, 2 steps x strength 0.5: 1 run" in capsys.readouterr().out
    import hashlib

    with Image.open(out) as written:
        text = written.text["parameters"]
    assert f"Task: img2img, Denoising strength: 0.5, Init image hash: {hashlib.sha256(source.read_bytes()).hexdigest()}" in text


@pytest.mark.parametrize("args, message", [
    (["--mask", "m.png"], "--mask needs --image"),
    (["--strength", "0.5"], "--strength needs --image"),
    (["--image", "missing.png"], "--image missing.png: No such file or directory"),
    (["--image", "IMAGE", "--steps", "1", "--strength", "0.5"], "1 steps at strength 0.5 run none"),
])
def test_cli_refuses_bad_task_options_in_one_line(args, message, tmp_path, capsys):
    picture().save(tmp_path / "in.png")
    args = [str(tmp_path / "in.png") if arg == "IMAGE" else arg for arg in args]
    assert main(["generate", "x", "--model", "random:tiny", "-o", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def encoded(image, fmt, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def test_a_phone_jpeg_is_edited_upright_as_its_exif_orientation_says():
    """EXIF Orientation 6: the stored image is shown turned 90 degrees clockwise; A1111 and OpenAI edit it so."""
    wide = Image.new("RGB", (96, 64), "white")
    wide.paste((255, 0, 0), (0, 0, 48, 64))  # red on the stored image's left half
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = tasks.edit(encoded(wide, "JPEG", exif=exif)).image
    assert upright.size == (64, 96)  # turned as a viewer shows it
    red, white = upright.getpixel((32, 10)), upright.getpixel((32, 85))  # the left half is now the top
    assert red[0] > 200 > red[1] and min(white) > 200


def test_a_16_bit_grey_png_keeps_its_tones():
    """PIL alone clips every 16-bit value above 255 to white; 30000 of 65535 is 117 of 255."""
    grey = Image.fromarray(np.full((64, 64), 30000, dtype=np.uint16))
    assert grey.mode == "I;16"
    assert tasks.edit(encoded(grey, "PNG")).image.getpixel((5, 5)) == (117, 117, 117)


def test_a_phone_mpo_is_read_as_its_first_frame():
    """A Multi-Picture Object (a phone camera's JPEG with extra frames) is accepted; its first frame is the photo."""
    phone = encoded(Image.new("RGB", (64, 64), "blue"), "MPO", save_all=True,
                    append_images=[Image.new("RGB", (64, 64), "yellow")])
    assert Image.open(io.BytesIO(phone)).format == "MPO"
    color = tasks.edit(phone).image.getpixel((32, 32))
    assert color[2] > 200 and color[0] < 50  # blue: the first frame
