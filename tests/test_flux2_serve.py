"""FLUX.2 [klein] served (random:tiny-flux2): a reference edit of several images through the real `openai` client's
images.edit and A1111's img2img init_images, masked inpainting, streamed previews decoded by the family's own VAE,
and what klein cannot make refused with a 400 before any compute."""

import base64
import io

import httpx2 as httpx
import openai
import pytest
from PIL import Image

from images import noise_png as png
from serving import InProcess
from sdcpu.families import flux2


@pytest.fixture(scope="module")
def server(sdcpu_home):
    live = InProcess("--model", "random:tiny-flux2")
    yield live
    assert live.stop() == 0


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")


def decoded(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def test_a_reference_edit_of_two_images_through_the_openai_client(client):
    images = [("a.png", png(1, (100, 70)), "image/png"), ("b.png", png(2, (64, 64)), "image/png")]
    both = client.images.edit(image=images, prompt="the cat wearing the hat", extra_body={"steps": 2, "seed": 5})
    made = decoded(both.data[0].b64_json)
    assert made.size == (96, 64)  # the first image's size, rounded down to multiples of 16
    assert "Task: img2img, Reference images: 2" in made.text["parameters"]
    one = client.images.edit(image=images[:1], prompt="the cat wearing the hat", extra_body={"steps": 2, "seed": 5})
    assert decoded(one.data[0].b64_json).tobytes() != made.tobytes()  # the second reference reaches the image


def test_a1111_img2img_edits_by_reference_and_inpaints_with_a_mask(server):
    body = {"prompt": "x", "init_images": [base64.b64encode(png(1, (64, 64))).decode()] * 2, "width": 64,
            "height": 64, "steps": 2, "seed": 1}  # denoising_strength left at A1111's 0.75: a reference edit reads none
    answer = httpx.post(f"{server.url}/sdapi/v1/img2img", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    assert "Reference images: 2" in decoded(answer.json()["images"][0]).text["parameters"]
    mask = io.BytesIO()
    Image.new("L", (64, 64), 255).save(mask, format="PNG")
    inpaint = {**body, "init_images": body["init_images"][:1], "mask": base64.b64encode(mask.getvalue()).decode(),
               "denoising_strength": 1.0}
    answer = httpx.post(f"{server.url}/sdapi/v1/img2img", json=inpaint, timeout=120)
    assert answer.status_code == 200, answer.text
    assert "Task: inpaint, Denoising strength: 1.0" in decoded(answer.json()["images"][0]).text["parameters"]


def test_streamed_partial_images_are_decoded_by_the_familys_own_vae(client):
    events = list(client.images.generate(prompt="x", size="80x64", stream=True, partial_images=2,
                                         extra_body={"steps": 3}))
    assert [event.type for event in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    partials = [decoded(event.b64_json) for event in events]
    assert all(image.size == (80, 64) for image in partials)
    assert len({image.tobytes() for image in partials}) == 3  # each step's latents, decoded: not one blank image


@pytest.mark.parametrize("route, sent, message", [
    ("/v1/images/generations", {"json": {"prompt": "x", "size": "72x64"}}, "must be a multiple of 16"),
    ("/v1/images/generations", {"json": {"prompt": "x", "negative_prompt": "y"}}, "take no negative prompt"),
    ("/v1/images/edits", {"files": [("image", ("a.png", png(1, (64, 64))))], "data": {"prompt": "x", "strength": "0.5"}},
     "edit by reference (the images condition every step, each step runs): leave the strength out"),
    ("/v1/images/edits", {"files": [("image[]", ("a.png", png(1, (64, 64))))] * 5, "data": {"prompt": "x"}},
     "5 images: at most 4"),
])
def test_what_klein_cannot_make_is_a_400_and_the_server_goes_on(server, route, sent, message):
    answer = httpx.post(f"{server.url}{route}", timeout=60, **sent)
    assert answer.status_code == 400 and message in answer.json()["error"]["message"], answer.text
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_a_prompt_served_again_skips_the_text_encoder_and_makes_the_same_image(server, client):
    from sdcpu.models import state

    pipe = server.worker.pipe
    calls = []
    hook = pipe.text_encoder.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        images = [client.images.generate(prompt=prompt, size="64x64", extra_body={"steps": 2, "seed": 9}).data[0]
                  for prompt in ("a kept prompt", "another prompt", "a kept prompt")]
    finally:
        hook.remove()
    assert len(calls) == 2  # the third request's prompt was encoded by the first
    assert decoded(images[0].b64_json).tobytes() == decoded(images[2].b64_json).tobytes()
    assert decoded(images[0].b64_json).tobytes() != decoded(images[1].b64_json).tobytes()
    kept = list(state.of(pipe).prompt_states)  # the least recently used first, at most the family's bound
    assert kept[-2:] == ["another prompt", "a kept prompt"] and len(kept) <= flux2.FAMILY.prompt_cache
