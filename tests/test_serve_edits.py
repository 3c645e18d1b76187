"""img2img and inpainting over HTTP, streamed partial images, progress and interrupt, the A1111 model/sampler/option
routes, against a live server on random:tiny: the real openai client for OpenAI's routes, httpx for A1111's."""

import base64
import concurrent.futures
import io
import json
import time

import httpx2 as httpx
import numpy as np
import openai
import pytest
from PIL import Image

from images import REMADE_ALONE_LEVELS, level_difference, png_claiming
from serving import counter
from sdcpu import load_pipeline
from sdcpu.models import state
from sdcpu.pipeline import generate

SIZE = (80, 64)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")


def encoded(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def decoded(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


PICTURE = Image.fromarray(np.random.default_rng(1).integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8))
LEFT = (0, 0, SIZE[0] // 2, SIZE[1])  # the area repainted


def left_mask(mode: str, repaint, keep) -> Image.Image:
    mask = Image.new(mode, SIZE, keep)
    mask.paste(repaint, LEFT)
    return mask


def test_openai_edits_img2img_and_inpainting_with_the_alpha_mask(server, client):
    image = ("in.png", encoded(PICTURE), "image/png")
    extra = {"steps": 4, "seed": 3}
    plain = client.images.edit(image=image, prompt="a boat", extra_body=extra)
    assert decoded(plain.data[0].b64_json).size == SIZE  # no size asked: the image's own
    assert "Task: img2img, Denoising strength: 0.75" in decoded(plain.data[0].b64_json).text["parameters"]
    alpha = left_mask("RGBA", (0, 0, 0, 0), (0, 0, 0, 255))  # OpenAI: alpha 0 marks the area to edit
    answer = client.images.edit(image=image, mask=("mask.png", encoded(alpha), "image/png"), prompt="a boat",
                                size="80x64", extra_body=extra)
    inpainted = decoded(answer.data[0].b64_json)
    assert "Task: inpaint, Denoising strength: 1.0" in inpainted.text["parameters"]
    # A1111's white = repaint, same seed and settings: the same repainted area; its overlay keeps the rest exactly
    body = {"prompt": "a boat", "init_images": [base64.b64encode(encoded(PICTURE)).decode()], "width": SIZE[0],
            "height": SIZE[1], "steps": 4, "seed": 3, "cfg_scale": 7.5, "denoising_strength": 1.0, "mask_blur": 0}
    for mask, invert in ((left_mask("L", 255, 0), 0), (left_mask("L", 0, 255), 1)):
        sent = {**body, "mask": base64.b64encode(encoded(mask)).decode(), "inpainting_mask_invert": invert}
        a1111 = httpx.post(f"{server.url}/sdapi/v1/img2img", json=sent, timeout=60).json()
        pasted = decoded(a1111["images"][0])
        assert json.loads(a1111["info"])["task"] == "inpaint" and "init_images" not in a1111["parameters"]
        assert level_difference(pasted.crop(LEFT), inpainted.crop(LEFT)) <= REMADE_ALONE_LEVELS
        kept = (SIZE[0] // 2, 0, *SIZE)
        assert level_difference(pasted.crop(kept), PICTURE.crop(kept)) == 0, "pasted back exactly: mask_blur 0"


def test_an_edit_without_a_size_of_an_image_not_a_multiple_of_8_is_made_at_its_size_rounded_down(client):
    odd = PICTURE.resize((100, 75))  # a size diffusers would round down: refused with 400 before
    answer = client.images.edit(image=("odd.png", encoded(odd), "image/png"), prompt="a boat", extra_body={"steps": 2})
    assert decoded(answer.data[0].b64_json).size == (96, 72)


@pytest.mark.parametrize("size, max_side, fitted", [((100, 75), 1024, (96, 72)), ((1000, 750), 1024, (1000, 744)),
                                                    ((4032, 3024), 1024, (1024, 768)), ((3024, 4032), 512, (384, 512)),
                                                    ((64, 64), 1024, (64, 64))])
def test_an_images_own_size_is_fitted_to_the_servers_bound_and_rounded_down_to_multiples_of_8(size, max_side, fitted):
    assert generate.fitted_size(*size, max_side) == fitted


def test_mask_blur_softens_the_seam(server):
    black = Image.new("RGB", SIZE)
    body = {"prompt": "x", "init_images": ["data:image/png;base64," + base64.b64encode(encoded(black)).decode()],
            "mask": base64.b64encode(encoded(left_mask("L", 255, 0))).decode(), "width": SIZE[0],
            "height": SIZE[1], "steps": 2, "seed": 1, "denoising_strength": 1.0}
    seams = {}
    for blur in (0, 8):
        answer = httpx.post(f"{server.url}/sdapi/v1/img2img", json={**body, "mask_blur": blur}, timeout=60).json()
        pixels = np.asarray(decoded(answer["images"][0]), dtype=np.int16)
        seams[blur] = int(pixels[:, SIZE[0] // 2 + 2].max())  # 2 px into the kept (black) side
    assert seams[0] == 0 and seams[8] > 0, seams


def test_stream_sends_partial_images_then_the_image(client, capsys):
    firsts = []
    for _ in range(2):  # the first stream of a server also loads the preview decoder
        start, events = time.perf_counter(), []
        for event in client.images.generate(prompt="a red boat", size="80x64", stream=True, partial_images=2,
                                            extra_body={"steps": 6, "seed": 2}):
            if not events:
                firsts.append(time.perf_counter() - start)
            events.append(event)
        kinds = [event.type for event in events]
        assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
        assert [event.partial_image_index for event in events[:2]] == [0, 1]
        assert all(decoded(event.b64_json).size == SIZE for event in events)
        assert events[-1].size == "80x64" and events[-1].output_format == "png"
    edit = client.images.edit(image=("in.png", encoded(PICTURE), "image/png"), prompt="x", stream=True,
                              partial_images=1, extra_body={"steps": 8})  # strength 0.75: 6 steps run
    kinds = [(event.type, decoded(event.b64_json).size) for event in edit]
    assert kinds == [("image_edit.partial_image", SIZE), ("image_edit.completed", SIZE)]
    with capsys.disabled():
        print(f"\nrandom:tiny 80x64, 6 steps, partial_images 2: first partial image {firsts[0]:.2f} s after the "
              f"request (loading the preview decoder), {firsts[1]:.2f} s once loaded")


def test_progress_shows_the_running_call_and_interrupt_stops_only_it(server):
    url, long = server.url, {"prompt": "x", "width": 128, "height": 128, "steps": 150, "seed": 4}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(httpx.post, f"{url}/sdapi/v1/txt2img", json=long, timeout=300)
        deadline = time.monotonic() + 60
        while (progress := httpx.get(f"{url}/sdapi/v1/progress").json())["state"]["sampling_step"] < 2:
            assert time.monotonic() < deadline, progress
            time.sleep(0.05)
        waiting = pool.submit(httpx.post, f"{url}/sdapi/v1/txt2img", json={**long, "steps": 3}, timeout=300)
        assert progress["state"]["job"] == "txt2img" and 0 < progress["progress"] < 1 and progress["eta_relative"] > 0
        assert decoded(progress["current_image"]).size == (128, 128)
        assert httpx.get(f"{url}/sdapi/v1/progress", params={"skip_current_image": True}).json()["current_image"] is None
        time.sleep(0.5)  # the second request is queued behind the first
        assert httpx.post(f"{url}/sdapi/v1/interrupt").json() == {"interrupted": True}
        stopped, after = running.result(), waiting.result()
    info = json.loads(stopped.json()["info"])
    assert stopped.status_code == 200 and info["interrupted"] and info["steps_done"] < 150
    assert decoded(stopped.json()["images"][0]).size == (128, 128)
    later = json.loads(after.json()["info"])
    assert not later["interrupted"] and later["steps_done"] >= 3
    idle = httpx.get(f"{url}/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["current_image"] is None and idle["state"]["job"] == ""
    assert httpx.post(f"{url}/sdapi/v1/interrupt").json() == {"interrupted": False}


BAD_UPLOADS = [  # (image, mask, what the message says)
    (b"not an image", None, "image: not an image sdcpu can read"),
    (encoded(PICTURE)[:-200], None, "image: a broken image"),
    (png_claiming(40000, 40000), None, "image: more than the 16777216 pixels accepted"),
    (encoded(PICTURE), encoded(Image.new("RGBA", (32, 32))), "mask: 32x32, not the image's 80x64"),
]


@pytest.mark.parametrize("image, mask, message", BAD_UPLOADS)
def test_bad_uploads_are_a_400_on_both_routes_and_the_server_goes_on(server, image, mask, message):
    files = {"image": ("in.png", image), **({"mask": ("mask.png", mask)} if mask else {})}
    answer = httpx.post(f"{server.url}/v1/images/edits", files=files, data={"prompt": "x"}, timeout=30)
    assert answer.status_code == 400 and message in answer.json()["error"]["message"], answer.text
    body = {"prompt": "x", "init_images": [base64.b64encode(image).decode()],
            **({"mask": base64.b64encode(mask).decode()} if mask else {})}
    answer = httpx.post(f"{server.url}/sdapi/v1/img2img", json=body, timeout=30)
    assert answer.status_code == 400 and message in answer.json()["error"]["message"], answer.text
    assert httpx.get(f"{server.url}/health").status_code == 200


IMAGE = base64.b64encode(encoded(PICTURE)).decode()
MASK = base64.b64encode(encoded(left_mask("L", 255, 0))).decode()
REFUSED = [  # (path, what is sent, what the message says)
    ("/v1/images/edits", {"data": {"prompt": "x", "quality": "high"}}, "quality: Extra inputs are not permitted"),
    ("/v1/images/edits", {"data": {"prompt": "x", "steps": "2.5"}}, "steps: Input should be a valid integer"),
    ("/v1/images/edits", {"data": {"prompt": "x", "strength": "0"}}, "strength: Input should be greater than 0"),
    ("/v1/images/edits", {"data": {"prompt": "x", "partial_images": "2"}}, "partial_images needs stream: true"),
    ("/v1/images/edits", {"data": {"prompt": "x", "stream": "true", "n": "2"}}, "n must be 1"),
    ("/v1/images/edits", {"data": {"prompt": "x", "steps": "1"}}, "1 steps at strength 0.75 run none"),
    ("/v1/images/edits", {"data": {"prompt": "x", "image": "in.png"}}, "image: send it as a file"),
    ("/v1/images/edits", {"files": {"other": ("a.png", b"x")}}, "other: Extra inputs are not permitted"),
    ("/v1/images/edits", {"files": [("image[]", ("a.png", encoded(PICTURE))), ("image[]", ("b.png", encoded(PICTURE)))]},
     "2 images: sd models edit one image (several are reference editing, which FLUX.2 klein does)"),
    ("/v1/images/edits", {"files": [("image", ("a.png", encoded(PICTURE))), ("mask", ("a.png", encoded(PICTURE))),
                                    ("mask", ("b.png", encoded(PICTURE)))]},
     "mask: one file, got 2"),
    ("/v1/images/edits", {"json": {"prompt": "x"}}, "multipart/form-data"),
    ("/sdapi/v1/img2img", {"json": {"prompt": "x"}}, "init_images: Field required"),
    ("/sdapi/v1/img2img", {"json": {"init_images": [IMAGE, IMAGE]}}, "2 images: sd models edit one image"),
    ("/sdapi/v1/img2img", {"json": {"init_images": [IMAGE] * 5}}, "init_images: List should have at most 4 items"),
    ("/sdapi/v1/img2img", {"json": {"init_images": ["%%%"]}}, "init_images: not base64"),
    ("/sdapi/v1/img2img", {"json": {"init_images": [IMAGE], "mask": MASK, "inpainting_fill": 0}}, "inpainting_fill 0: asks for"),
    ("/sdapi/v1/img2img", {"json": {"init_images": [IMAGE], "resize_mode": 1}}, "resize_mode 1: asks for"),
    ("/sdapi/v1/img2img", {"json": {"init_images": [IMAGE], "mask": MASK, "inpainting_fill": 1, "inpaint_full_res": True}}, "inpaint_full_res true: asks for"),
    ("/sdapi/v1/img2img", {"json": {"init_images": [IMAGE], "enable_hr": False}}, "enable_hr: Extra inputs"),
    ("/sdapi/v1/img2img", {"json": {"init_images": [IMAGE], "denoising_strength": "0.5"}}, "denoising_strength: Input should be a valid number"),
    ("/sdapi/v1/options", {"json": {"sd_model_checkpoint": "v1-5.safetensors"}}, "this server serves 'random:tiny' (serve --model A"),
    ("/sdapi/v1/options", {"json": {"sd_vae": "auto"}}, "sd_vae: Extra inputs are not permitted"),
]


def test_refused_fields_name_themselves(server):
    upload = {"image": ("in.png", encoded(PICTURE))}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for path, sent, message in REFUSED:
            if path.endswith("edits") and "json" not in sent:
                sent = {"files": upload, **sent, "data": {"prompt": "x", **sent.get("data", {})}}
            answer = http.post(path, **sent)
            assert answer.status_code == 400 and message in answer.json()["error"]["message"], (sent, answer.text)
        assert http.get("/health").status_code == 200


def test_model_sampler_and_option_routes(server):
    with httpx.Client(base_url=f"{server.url}/sdapi/v1") as http:
        [model] = http.get("/sd-models").json()
        assert model["title"] == model["model_name"] == "random:tiny"
        samplers = http.get("/samplers").json()
        assert {"name": "DPM++ 2M", "aliases": ["dpm++"], "options": {}} in samplers
        assert http.get("/options").json()["sd_model_checkpoint"] == "random:tiny"
        answer = http.post("/options", json={"sd_model_checkpoint": "random:tiny"})
        assert answer.status_code == 200


def test_previews_fall_back_to_approx_cheap_without_taesd():
    """No TAESD in the hub cache (tests are offline) and no tiny VAE in the pipeline: A1111's linear approximation."""
    import torch

    from sdcpu.serve.preview import Previewer

    pipe = load_pipeline("random:tiny")
    state.of(pipe).model = None  # a user's own model: not a random one, whose random TAESD is built offline
    previewer = Previewer(pipe)
    [image] = previewer.images(torch.randn(1, 4, 8, 10), 80, 64)
    assert previewer.source == "approx cheap" and image.size == SIZE


def _float_fields(table) -> list[str]:
    return [name for name, spec in table.items() if "float" in repr(spec.type)]


def test_nan_and_infinity_in_every_float_field_are_a_400_before_any_compute(server):
    from sdcpu.serve import a1111_fields

    routes = [("/sdapi/v1/txt2img", {"prompt": "x"}, _float_fields(a1111_fields.TXT2IMG)),
              ("/sdapi/v1/img2img", {"prompt": "x", "init_images": [IMAGE]}, _float_fields(a1111_fields.IMG2IMG)),
              ("/v1/images/generations", {"prompt": "x"}, ["guidance"])]
    assert {"s_tmax", "s_tmin", "hr_scale", "refiner_switch_at", "denoising_strength", "cfg_scale"} <= set(routes[0][2])
    assert {"image_cfg_scale", "denoising_strength", "cfg_scale"} <= set(routes[1][2])
    before = counter(httpx.get(f"{server.url}/metrics").text, "sdcpu_images_generated_total")
    for value in ("NaN", "Infinity", "-Infinity"):
        for path, body, fields in routes:
            for name in fields:  # json.dumps would refuse to write them: the raw tokens Python's json parser takes
                content = json.dumps(body)[:-1] + f', "{name}": {value}}}'
                answer = httpx.post(f"{server.url}{path}", content=content,
                                    headers={"Content-Type": "application/json"}, timeout=30)
                assert answer.status_code == 400, (path, name, value, answer.text)
                assert f"{name}: Input should be a finite number" in answer.json()["error"]["message"], answer.text
        for name in ("guidance", "strength"):
            answer = httpx.post(f"{server.url}/v1/images/edits", files={"image": ("in.png", encoded(PICTURE))},
                                data={"prompt": "x", name: value}, timeout=30)
            assert answer.status_code == 400, (name, value, answer.text)
            assert f"{name}: Input should be a finite number" in answer.json()["error"]["message"], answer.text
    assert counter(httpx.get(f"{server.url}/metrics").text, "sdcpu_images_generated_total") == before
