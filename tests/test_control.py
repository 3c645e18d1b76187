"""ControlNet (sdcpu.pipeline.control) on random:tiny and random:tiny-sdxl with random-weight replicas of their
families' ControlNets: the canny preprocessor, the checks, the recipes that cannot take one, and the control's effect
through generate.run_batch, the `generate` command, and both APIs of serve (webuiapi's ControlNetUnit, OpenAI's extra
fields)."""

import base64

import numpy as np
import pytest
import torch
import webuiapi
from PIL import Image

from controls import REQUEST, png, square
from images import level_difference as levels
from serving import InProcess, client
from sdcpu import load_pipeline, recipes
from sdcpu.cli import main
from sdcpu.errors import UsageError
from sdcpu.families import flux2, sd
from sdcpu.pipeline import control, generate, outputs, tasks


def test_canny_finds_a_squares_sides_and_nothing_in_a_flat_or_faint_image():
    edges = np.asarray(control.canny(square()).convert("L")) > 0
    rows, cols = np.nonzero(edges)
    # every edge pixel lies on the square's border (one pixel either side of the step: NMS keeps one of the two)
    on_border = (np.minimum(np.abs(rows[:, None] - [15, 16, 47, 48]).min(1), np.abs(cols[:, None] - [15, 16, 47, 48])
                            .min(1)) == 0)
    assert edges.sum() > 4 * 28 and on_border.all()
    assert not edges[20:44, 20:44].any() and not edges[:10].any()
    assert not np.asarray(control.canny(Image.new("RGB", (64, 64), "gray"))).any()
    # a step of 10 gray levels: its Sobel magnitude (40) is under the low threshold
    assert not np.asarray(control.canny(square(inside=110, outside=100))).any()


@pytest.mark.parametrize("arguments, message", [
    (dict(kind="pose"), "control type 'pose': sdcpu runs canny, depth"),
    (dict(scale=2.5), "control scale 2.5: from 0 to 2"),
    (dict(start=0.5, end=0.5), "give 0 <= start < end <= 1"),
    (dict(thresholds=(200, 100)), "give 1 <= low <= high <= 255"),
])
def test_a_bad_control_is_one_line(arguments, message):
    kind = arguments.pop("kind", "canny")
    with pytest.raises(UsageError, match=message):
        control.control(png(square()), kind, **arguments)


def test_recipes_whose_unet_takes_no_residuals_and_families_without_controlnets_are_refused():
    for allowed in ("baseline", "bf16,tome,tiny-vae", "openvino=f32,tiny-vae", "lcm-lora"):
        assert control.refusal(sd.FAMILY, recipes.parse(allowed)) is None, allowed
    for recipe in ("compile", "deepcache=2", "openvino=f32,int8"):
        reason = control.refusal(sd.FAMILY, recipes.parse(recipe))
        assert reason and recipe.split(",")[-1].split("=")[0] in reason and "--recipe baseline" in reason
    # OpenVINO's IR taking residuals is converted from the model's own files: a step that changed the UNet first
    assert "without lcm-lora" in control.refusal(sd.FAMILY, recipes.parse("lcm-lora,openvino=f32"))
    assert "no ControlNet" in control.refusal(flux2.FAMILY, None)
    assert "weights=int4 after openvino" in control.refusal(sd.FAMILY, recipes.parse("openvino=f32,weights=int4"))


@pytest.mark.parametrize("model", ["random:tiny", "random:tiny-sdxl"])
def test_a_control_steers_the_image_and_at_scale_0_changes_nothing(tiny, model):
    pipe = tiny() if model == "random:tiny" else load_pipeline(model)
    plain = generate.run(pipe, REQUEST).images[0]
    steered = generate.run(pipe, REQUEST, control=control.control(png(square()), "canny")).images[0]
    off = generate.run(pipe, REQUEST, control=control.control(png(square()), "canny", 0.0)).images[0]
    # float rounding across two pipeline classes' calls: a level or two at most; the random replica's residuals move
    # the image well beyond that (25 levels on both, where zero residuals would leave it within the 2)
    assert levels(plain, off) <= 2 and levels(plain, steered) > 5
    assert steered.size == (64, 64)


def test_an_inpainting_unets_controlnet_reads_the_latents_alone(sdcpu_home):
    pipe = load_pipeline("random:tiny-inpainting")  # a 9-channel UNet; its ControlNet replica takes 4
    edit = tasks.edit(png(Image.new("RGB", (64, 64), "red")), png(square()), 1.0)
    steer = control.control(png(square()), "canny")
    plain = generate.run(pipe, REQUEST, edit).images[0]
    assert levels(plain, generate.run(pipe, REQUEST, edit, control=steer).images[0]) > 5
    made = control.controlnet(pipe, "canny")
    assert made.config.in_channels == 4
    again = control.controlnet(load_pipeline("random:tiny-inpainting"), "canny")  # a replica is the same every time
    assert all(torch.equal(one, two) for one, two in zip(made.state_dict().values(), again.state_dict().values()))


def test_a_control_steers_img2img_and_inpainting(tiny):
    pipe = tiny()
    steer = control.control(png(square()), "depth", resize="crop")
    edit = tasks.edit(png(Image.new("RGB", (64, 64), "red")), None, 0.6)
    for made in (edit, tasks.edit(png(Image.new("RGB", (64, 64), "red")), png(square()), 1.0)):
        plain = generate.run(pipe, REQUEST, made).images[0]
        assert levels(plain, generate.run(pipe, REQUEST, made, control=steer).images[0]) > 5


def test_a_control_steers_both_passes_of_a_hires_fix(tiny, monkeypatch):
    from sdcpu.pipeline import hires

    pipe, second = tiny(), hires.Hires(128, 128, steps=2)
    plain = generate.run(pipe, REQUEST, hires=second).images[0]
    made, pipeline_for = [], tasks.pipeline_for
    monkeypatch.setattr(tasks, "pipeline_for", lambda pipe, task, net=None: made.append((task, net is not None)) or
                        pipeline_for(pipe, task, net))
    steered = generate.run(pipe, REQUEST, hires=second, control=control.control(png(square()), "canny")).images[0]
    assert made == [("txt2img", True), ("img2img", True)]  # each pass's pipeline is the ControlNet one
    assert steered.size == (128, 128) and levels(plain, steered) > 5


def test_generate_takes_a_control_and_refuses_what_cannot_run_before_loading(tmp_path, capsys, monkeypatch):
    from sdcpu import models

    path = tmp_path / "edge.png"
    square().save(path)
    base = ["generate", "x", "--model", "random:tiny", "--size", "64x64", "--steps", "2", "--seed", "1"]
    loads = []
    monkeypatch.setattr(models, "load_pipeline", lambda *a, **k: loads.append(a) or 1 / 0)
    for extra, message in ((["--control", str(path), "--recipe", "compile"], "has compile, whose UNet"),
                           (["--controlnet", "x/y"], "--controlnet needs --control"),
                           (["--control", str(path), "--control-scale", "3"], "control scale 3"),
                           (["--control", str(tmp_path / "none.png")], "--control")):
        assert main(base + extra) == 2  # auto, with a control: a recipe keeping the eager UNet, on every class
        assert message in capsys.readouterr().err
    assert not loads
    monkeypatch.undo()
    out = tmp_path / "out.png"
    assert main(base + ["--recipe", "baseline", "--control", str(path), "--control-type", "canny",
                        "--output", str(out)]) == 0
    assert 'ControlNet 0: "Module: canny' in Image.open(out).text["parameters"]


@pytest.fixture(scope="module")
def server(sdcpu_home):
    live = InProcess("--api-key", "control-key")
    yield live
    assert live.stop() == 0


def test_a1111s_controlnet_unit_through_webuiapi_and_openais_extra_fields(server):
    host, port = server.url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port))
    api.session.headers["Authorization"] = "Bearer control-key"
    unit = webuiapi.ControlNetUnit(image=square(), module="canny", model="control_v11p_sd15_canny",
                                   threshold_a=100, threshold_b=200)
    # alwayson_scripts given: webuiapi's default is one dict shared by its calls, the first's ControlNet left in it
    made = api.txt2img(prompt="a house", width=64, height=64, steps=2, seed=3, controlnet_units=[unit],
                       alwayson_scripts={})
    plain = api.txt2img(prompt="a house", width=64, height=64, steps=2, seed=3, alwayson_scripts={})
    assert "ControlNet 0" in made.info["infotexts"][0] and levels(made.image, plain.image) > 5
    with client(server) as http:
        assert http.get("/sdapi/v1/scripts").json()["txt2img"] == ["controlnet"]
        assert "lllyasviel/control_v11p_sd15_canny" in http.get("/controlnet/model_list").json()["model_list"]
        body = {"prompt": "a house", "size": "64x64", "steps": 2, "seed": 3,
                "control_image": base64.b64encode(png(square())).decode()}
        answer = http.post("/v1/images/generations", json=body)
        assert answer.status_code == 200 and answer.json()["sdcpu"]["control"].startswith("Module: canny")
        txt2img = {"prompt": "x", "width": 64, "height": 64, "steps": 2}
        for units, message in (
                ([{**unit.to_dict(), "module": "depth_midas"}], "no depth estimator"),
                ([unit.to_dict(), unit.to_dict()], "2 enabled units"),
                ([{**unit.to_dict(), "control_mode": "ControlNet is more important"}], "control_mode"),
                ([{**unit.to_dict(), "module": "none", "model": "control_v11p_sd15_openpose"}], "canny or a depth")):
            refused = http.post("/sdapi/v1/txt2img", json={**txt2img, "alwayson_scripts": {"controlnet": {
                "args": units}}})
            assert refused.status_code == 400 and message in refused.json()["error"]["message"], refused.text
        other = http.post("/sdapi/v1/txt2img", json={**txt2img, "alwayson_scripts": {"adetailer": {"args": []}}})
        assert other.status_code == 400 and "only controlnet" in other.json()["error"]["message"]
        assert server.worker.depth() == 0


def test_parameters_text_carries_the_control():
    text = outputs.parameters_text(REQUEST, 5, model="m", random_weights=False, scheduler="euler", recipe="baseline",
                                   control=control.control(png(square()), "depth", 0.5))
    assert text.endswith('ControlNet 0: "Module: depth, Model: the family depth ControlNet, Weight: 0.5, Guidance '
                         'Start: 0, Guidance End: 1"')
