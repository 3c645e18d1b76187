"""A real AUTOMATIC1111 client, webuiapi (mix1009/sdwebuiapi, pinned in constraints.txt), against a live server on
random:tiny: it sends A1111's whole request model with every field at its default, and reads A1111's answers."""

import io
import json

import pytest
import webuiapi
from PIL import Image

from images import REMADE_ALONE_LEVELS, level_difference
from sdcpu.serve import a1111_fields

TINY = {"width": 80, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def api(server):
    return webuiapi.WebUIApi(baseurl=f"{server.url}/sdapi/v1")  # its defaults: sampler Euler a, scheduler automatic


def reopened(image: Image.Image) -> Image.Image:
    """webuiapi's image, encoded and decoded again: proof that the PNG it got decodes."""
    out = io.BytesIO()
    image.save(out, format="PNG")
    return Image.open(io.BytesIO(out.getvalue())).convert("RGB")


def refused(call) -> tuple[int, str]:
    """The status and error message of a call webuiapi raises on (RuntimeError(status, body))."""
    with pytest.raises(RuntimeError) as raised:
        call()
    status, body = raised.value.args
    return status, json.loads(body)["error"]["message"]


def test_txt2img_answers_a1111s_shape_with_an_image_of_the_asked_size(api):
    result = api.txt2img(prompt="a red boat", seed=11, cfg_scale=5.0, **TINY)
    [image] = result.images
    assert reopened(image).size == (80, 64)
    info = result.info  # webuiapi parses the JSON string
    for key in ("seed", "all_seeds", "prompt", "all_prompts", "negative_prompt", "sampler_name", "steps", "cfg_scale",
                "width", "height", "infotexts", "sd_model_name"):
        assert key in info, key
    assert (info["seed"], info["all_seeds"], info["sampler_name"], info["width"]) == (11, [11], "Euler a", 80)
    assert info["infotexts"][0].startswith("a red boat\n") and "Seed: 11" in info["infotexts"][0]
    assert result.parameters["enable_hr"] is False and result.parameters["n_iter"] == 1  # the request, echoed


def test_n_iter_runs_batches_one_after_another_with_seeds_following_on(api):
    result = api.txt2img(prompt="x", seed=20, batch_size=2, n_iter=2, **TINY)
    assert len(result.images) == 4 and result.info["all_seeds"] == [20, 21, 22, 23]
    alone = api.txt2img(prompt="x", seed=22, **TINY).images[0]
    # the third image is seed 22's, up to the rounding a batch of 2 may differ by
    assert level_difference(reopened(alone), reopened(result.images[2])) <= REMADE_ALONE_LEVELS


def test_img2img_and_inpainting_with_the_clients_defaults(api):
    picture = Image.effect_noise((80, 64), 60).convert("RGB")
    result = api.img2img(images=[picture], prompt="x", seed=3, width=80, height=64, steps=4)
    assert reopened(result.images[0]).size == (80, 64) and result.info["task"] == "img2img"
    mask = Image.new("L", (80, 64), 0)
    mask.paste(255, (0, 0, 40, 64))
    # the client's defaults inpainting_fill 0 and inpaint_full_res true ask for A1111's fill and crop: refused
    status, text = refused(lambda: api.img2img(images=[picture], mask_image=mask, prompt="x", width=80, height=64))
    assert status == 400 and "inpainting_fill 0: asks for masked content" in text, text
    result = api.img2img(images=[picture], mask_image=mask, prompt="x", width=80, height=64, steps=4,
                         inpainting_fill=1, inpaint_full_res=False, mask_blur=0, seed=3)
    inpainted = reopened(result.images[0])
    assert result.info["task"] == "inpaint"
    kept = (40, 0, 80, 64)
    assert level_difference(inpainted.crop(kept), picture.crop(kept)) == 0, "pasted back exactly: mask_blur 0"


def test_what_is_asked_and_not_done_is_refused_naming_the_field(api):
    for asked, message in (({"enable_hr": True, "hr_upscaler": "R-ESRGAN 4x+"}, "hr_upscaler 'R-ESRGAN 4x+'"),
                           ({"enable_hr": True, "hr_checkpoint_name": "other"}, "asks for a second-pass model"),
                           ({"restore_faces": True}, "restore_faces true: asks for face restoration"),
                           ({"styles": ["cinematic"]}, 'styles ["cinematic"]: asks for saved prompt styles'),
                           ({"script_name": "x/y/z plot"}, 'script_name "x/y/z plot": asks for a script'),
                           ({"subseed_strength": 0.5}, "subseed_strength 0.5: asks for variation seeds"),
                           ({"scheduler": "Exponential"}, "scheduler 'Exponential' is not served"),
                           ({"override_settings": {"sd_vae": "vae.pt"}}, "override_settings.sd_vae")):
        status, text = refused(lambda: api.txt2img(prompt="x", **TINY, **asked))
        assert status == 400 and message in text, (asked, text)


def test_hires_fix_makes_the_larger_image_and_says_so_in_its_infotext(api):
    """The client's hires fix: its defaults (Latent, denoising_strength 0.7, hr_second_pass_steps 0) at hr_scale 2,
    and a plain resize to a width (the height keeping the aspect)."""
    result = api.txt2img(prompt="a red boat", seed=5, enable_hr=True, hr_scale=2, **TINY)
    assert reopened(result.images[0]).size == (160, 128)
    info = result.info
    assert (info["width"], info["height"], info["denoising_strength"]) == (80, 64, 0.7)  # A1111's: the first pass
    assert "Size: 80x64, Hires upscale: 2, Hires steps: 2, Hires upscaler: Latent, Denoising strength: 0.7" in (
        info["infotexts"][0])
    resized = api.txt2img(prompt="a red boat", seed=5, enable_hr=True, hr_upscaler="Lanczos", hr_resize_x=120,
                          denoising_strength=0.5, **TINY)
    assert reopened(resized.images[0]).size == (120, 96)


def test_schedule_and_checkpoint_overrides_are_honoured(api):
    karras = api.txt2img(prompt="x", seed=4, sampler_name="DPM++ 2M", scheduler="Karras", **TINY,
                         override_settings={"sd_model_checkpoint": "random:tiny"})
    assert karras.info["sdcpu_scheduler"] == "dpm++-karras"
    assert api.txt2img(prompt="x", seed=4, sampler_name="DPM++ 2M", sampler_index="DPM++ 2M",
                       **TINY).info["sdcpu_scheduler"] == "dpm++"
    status, text = refused(lambda: api.txt2img(prompt="x", sampler_name="Euler", scheduler="karras", **TINY))
    assert status == 400 and "Karras is served with DPM++ 2M, DPM++ 2M Karras only" in text, text


def test_listing_calls_answer_a1111s_shapes(api):
    assert api.util_get_model_names() == ["random:tiny"] and api.util_get_current_model() == "random:tiny"
    api.util_set_model("random:tiny")  # POST /options with the model served
    assert set(api.util_get_sampler_names()) == set(a1111_fields.SAMPLERS)
    assert api.util_get_scheduler_names() == ["automatic", "karras"]
    assert [item["name"] for item in api.get_upscalers()] == ["None", "Lanczos", "Nearest"]
    assert api.get_loras() == [] and api.get_scripts() == {"txt2img": ["controlnet"], "img2img": ["controlnet"]}
    assert api.get_cmd_flags()["ckpt"] == "random:tiny" and [mode["name"] for mode in api.get_latent_upscale_modes()][:2] == [
        "Latent", "Latent (antialiased)"]
    assert api.get_options()["sd_model_checkpoint"] == "random:tiny"
    api.util_wait_for_ready(check_interval=0.1)  # /progress idle: progress 0 and job_count 0


def test_every_field_the_client_sends_is_in_the_table():
    """webuiapi's bodies, captured without a server: each field is A1111's, so each is in sdcpu's table."""
    sent = {}

    class Capture:
        auth = None

        def post(self, url, json):
            sent[url.rsplit("/", 1)[1]] = json
            raise StopIteration

    api = webuiapi.WebUIApi.__new__(webuiapi.WebUIApi)
    api.baseurl, api.session = "http://unused/sdapi/v1", Capture()
    api.default_sampler, api.default_scheduler, api.default_steps = "Euler a", "automatic", 20
    for call in (lambda: api.txt2img(), lambda: api.img2img(images=[Image.new("RGB", (8, 8))],
                                                             mask_image=Image.new("L", (8, 8)))):
        with pytest.raises(StopIteration):
            call()
    assert set(sent["txt2img"]) <= set(a1111_fields.TXT2IMG)
    assert set(sent["img2img"]) <= set(a1111_fields.IMG2IMG)
    body = a1111_fields.A1111Txt2ImgRequest(**sent["txt2img"])  # the types agree
    assert a1111_fields.refusal(body, "euler-a", "random:tiny") is None
    assert json.loads(json.dumps(body.model_dump())) == body.model_dump()  # parameters are JSON
