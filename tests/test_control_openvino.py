"""ControlNet on the `openvino` step: the ControlNet's own IR and the UNet's taking its residuals
(sdcpu.backends.openvino_control)."""

from unittest import mock

import pytest
from PIL import Image

from controls import REQUEST, png, square
from images import level_difference as levels
from sdcpu import load_pipeline, optimize
from sdcpu.backends import components, openvino
from sdcpu.errors import UsageError
from sdcpu.pipeline import control, generate, tasks


@pytest.mark.parametrize("model", ["random:tiny", pytest.param("random:tiny-sdxl", marks=pytest.mark.slow)])
# tiny-sdxl slow: about 45 s on 2 cores (its two text encoders, UNet and ControlNet converted); the fast suite runs SD's
# path here and SDXL's ControlNet on eager torch (test_control.py)
def test_openvino_runs_a_controlnet_through_a_second_ir_and_makes_eagers_image(tiny, model):
    eager, converted = (tiny(), tiny()) if model == "random:tiny" else (load_pipeline(model), load_pipeline(model))
    optimize(converted, "openvino=f32")
    steer = control.control(png(square()), "canny")
    plain = generate.run(converted, REQUEST).images[0]
    steered = generate.run(converted, REQUEST, control=steer).images[0]
    assert (converted.unet.run.path.parent / "unet_controlled.xml").is_file()
    standing = control.controlnet(converted, "canny")  # the ControlNet on OpenVINO too: its IR, no torch weights
    assert isinstance(standing, components.ControlNet) and standing.run.path.is_file()
    assert not list(standing.parameters())
    # OpenVINO f32 and torch round differently: within 2 levels (the uncontrolled images' bound in test_openvino)
    assert levels(steered, generate.run(eager, REQUEST, control=steer).images[0]) <= 2
    assert levels(plain, steered) > 5 and levels(plain, generate.run(converted, REQUEST).images[0]) == 0
    # at scale 0 the stand-in gives zero residuals without running the ControlNet: the controlled IR adds nothing
    off, ran, call = control.control(png(square()), "canny", 0.0), [], openvino.Compiled.__call__

    def counted(run, *inputs):
        ran.append(run.name)
        return call(run, *inputs)

    with mock.patch.object(openvino.Compiled, "__call__", counted):
        assert levels(plain, generate.run(converted, REQUEST, control=off).images[0]) <= 2
    assert "unet_controlled" in ran and "controlnet" not in ran
    converted.unet.run = object()  # what a LoRA set does: its own compiled UNet, without the residual inputs
    with pytest.raises(UsageError, match="LoRAs together on OpenVINO"):
        generate.run(converted, REQUEST, control=steer)


def test_an_inpainting_unets_controlnet_on_openvino_makes_eagers_image_and_release_drops_it(sdcpu_home):
    converted = load_pipeline("random:tiny-inpainting")
    optimize(converted, "openvino=f32,release")
    edit = tasks.edit(png(Image.new("RGB", (64, 64), "red")), png(square()), 1.0)
    steer = control.control(png(square()), "canny")
    made = generate.run(converted, REQUEST, edit, control=steer).images[0]
    # OpenVINO f32 and torch round differently: within 2 levels (the uncontrolled images' bound in test_openvino)
    eager = generate.run(load_pipeline("random:tiny-inpainting"), REQUEST, edit, control=steer).images[0]
    assert levels(made, eager) <= 2
    # under `release` the ControlNet is the denoiser's part: the call ended in the VAE's, which dropped its compiled
    # models with the UNet's; the next call compiles them again
    controlnet = control.controlnet(converted, "canny")
    assert controlnet.phases is converted.unet.phases and controlnet.part == "denoiser"
    assert not controlnet.run.by_shape and not converted.unet.controlled.by_shape
    assert levels(generate.run(converted, REQUEST, edit, control=steer).images[0], made) == 0
