"""LoRAs over HTTP, against a live server on random:tiny with a --lora-dir: A1111's <lora:name:weight> prompt tags and
the OpenAI routes' `loras` field (the real openai client), /sdapi/v1/loras, and the names a request may not use."""

import base64
import io
import struct

import httpx2 as httpx
import openai
import pytest
from PIL import Image

from images import REMADE_ALONE_LEVELS, level_difference
from loras import write_loras
from serving import InProcess
from sdcpu.models.loras import prompt_loras
from sdcpu.pipeline import generate
from sdcpu.serve import a1111_fields, schemas

# A LoRA of 0.1 x randn factors at rank 4 moves random:tiny's 64x64 image by tens of levels (test_lora: 3e-2 max abs
# on [0, 1] pixels at 3 steps, about 8 levels): more than 2 levels apart means the LoRA was applied.
APPLIED_LEVELS = REMADE_ALONE_LEVELS


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tiny):
    folder = tmp_path_factory.mktemp("lora-dir")
    write_loras(tiny(), folder, 1)  # kohya-1 and peft-1: the same LoRA in two layouts
    return folder


@pytest.fixture(scope="module")
def server(sdcpu_home, lora_dir):
    live = InProcess("--lora-dir", str(lora_dir))
    yield live
    assert live.stop() == 0


def txt2img(server, prompt: str) -> Image.Image:
    response = httpx.post(f"{server.url}/sdapi/v1/txt2img", timeout=120,
                          json={"prompt": prompt, "steps": 3, "width": 64, "height": 64, "seed": 5})
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    image.load()
    return image


def test_a1111_lists_the_folder_and_applies_a_prompt_tag_then_goes_back(server):
    listed = httpx.get(f"{server.url}/sdapi/v1/loras").json()
    assert [item["name"] for item in listed] == ["kohya-1", "peft-1"]
    assert all(item["path"] == f"{item['name']}.safetensors" for item in listed)  # no server path shown
    base = txt2img(server, "a ship")
    tagged = txt2img(server, "a ship <lora:kohya-1:0.8>")
    assert level_difference(tagged, base) > APPLIED_LEVELS
    text = tagged.info["parameters"]
    assert text.startswith("a ship <lora:kohya-1:0.8>\n") and 'Lora hashes: "kohya-1: ' in text
    # the other layout of the same LoRA: the same image (test_lora's kohya/peft bound, far below a level)
    assert level_difference(txt2img(server, "a ship <lora:peft-1:0.8>"), tagged) <= REMADE_ALONE_LEVELS
    assert level_difference(txt2img(server, "a ship"), base) <= REMADE_ALONE_LEVELS  # the set switched back to none


def test_openai_names_loras_in_a_field_and_gets_the_tagged_image(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    answer = client.images.generate(prompt="a ship", size="64x64",
                                    extra_body={"steps": 3, "seed": 5, "loras": "kohya-1:0.8"})
    image = Image.open(io.BytesIO(base64.b64decode(answer.data[0].b64_json)))
    assert level_difference(image.convert("RGB"), txt2img(server, "a ship <lora:kohya-1:0.8>")) <= REMADE_ALONE_LEVELS


@pytest.mark.parametrize("prompt, message", [
    ("a ship <lora:../kohya-1:1>", "a name from the LoRA folder, not a path"),
    ("a ship <lora:/etc/passwd>", "a name from the LoRA folder, not a path"),
    ("a ship <lora:nowhere:1>", "'nowhere' is not in the LoRA folder (kohya-1, peft-1)"),
    ("a ship <lora:kohya-1:1e30>", "the weight 1e30 is out of bounds: from -10 to 10"),
    ("a ship <lora:kohya-1:-11>", "the weight -11 is out of bounds"),
    ("a ship <lora:kohya-1:lots>", "is not a number"),
    ("a ship <lora:kohya-1:1> <lora:kohya-1:0.5>", "'kohya-1' is named twice"),
])
def test_a_lora_a_request_may_not_name_is_a_400_and_the_server_goes_on(server, prompt, message):
    response = httpx.post(f"{server.url}/sdapi/v1/txt2img", json={"prompt": prompt, "steps": 1, "width": 64,
                                                                  "height": 64})
    assert response.status_code == 400 and message in response.json()["error"]["message"], response.text
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_a_malformed_or_outside_lora_is_a_400_in_one_line_without_the_folder(server, lora_dir, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes((lora_dir / "kohya-1.safetensors").read_bytes())
    bad = {"huge": struct.pack("<Q", 2**62) + b"{}", "text": b"a text file, so named\n"}
    try:
        for name, data in bad.items():
            (lora_dir / f"{name}.safetensors").write_bytes(data)
        (lora_dir / "linked.safetensors").symlink_to(outside)  # a link out of --lora-dir
        for name, message in (("huge", "LoRA 'huge': cannot load it (SafetensorError: "),
                              ("text", "LoRA 'text': cannot load it (SafetensorError: "),
                              ("linked", "LoRA 'linked' links outside the LoRA folder: refused")):
            response = httpx.post(f"{server.url}/sdapi/v1/txt2img", timeout=60,
                                  json={"prompt": f"a ship <lora:{name}:1>", "steps": 1, "width": 64, "height": 64})
            error = response.json()["error"]["message"]
            assert response.status_code == 400 and message in error, response.text
            assert str(lora_dir) not in error and str(tmp_path) not in error and "\n" not in error, error
        listed = [item["name"] for item in httpx.get(f"{server.url}/sdapi/v1/loras").json()]
        assert listed == ["huge", "kohya-1", "peft-1", "text"]  # the link is no LoRA of the folder
        assert level_difference(txt2img(server, "a ship <lora:kohya-1:0.8>"), txt2img(server, "a ship")) > APPLIED_LEVELS
    finally:
        for name in (*bad, "linked"):
            (lora_dir / f"{name}.safetensors").unlink(missing_ok=True)


def test_a_server_without_a_lora_dir_refuses_lora_names():
    limits = schemas.Limits(1024, generate.DEFAULTS, tokenizer=None)
    with pytest.raises(schemas.BadRequest, match="serves no LoRAs: start sdcpu serve with --lora-dir"):
        a1111_fields.from_a1111(a1111_fields.A1111Txt2ImgRequest(prompt="a <lora:style:1>"), limits)
    prompt, loras = prompt_loras("a ship, <lora:style:0.5> at sea")
    assert (prompt, loras) == ("a ship, at sea", (("style", 0.5),))
