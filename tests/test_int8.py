"""The `int8` step on random:tiny: NNCF hybrid quantization of the OpenVINO UNet, its cache, and its refusals."""

import dataclasses
import re
import sys

import numpy as np
import pytest
import torch

from sdcpu import optimize
from sdcpu.backends import int8, openvino as backend
from sdcpu.system import hardware

F32_CPU = dataclasses.replace(hardware.detect(), flags=frozenset())  # OpenVINO in f32: int8 is the only change
# int8 against the f32 OpenVINO image, same seed, 3 steps: measured 3.2e-2 max abs on [0, 1] pixels; f32 itself is
# within 1e-4 (test_openvino.py), so anything above that is quantization at work. Bound 0.1: the image stays close.
INT8_ATOL = 0.1


def image(pipe):
    return pipe("a sailing ship", num_inference_steps=3, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    folder = tmp_path_factory.mktemp("int8-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backend, "sdcpu_home", lambda: folder)
        yield folder


def steps(pipe, recipe):
    pipe, outcomes = optimize(pipe, recipe, F32_CPU)
    return pipe, {o.step.split("=")[0]: o for o in outcomes}


@pytest.fixture(scope="module")
def quantized(home, tiny):
    f32, _ = steps(tiny(), "openvino=f32")
    pipe, outcomes = steps(tiny(), "openvino=f32,int8")
    return pipe, outcomes["int8"], image(f32)


def test_quantizes_the_openvino_unet_and_keeps_the_image_close(quantized, home):
    pipe, outcome, f32 = quantized
    calls = re.search(r"calibrated on (\d+) UNet calls", outcome.detail)
    assert outcome.applied and calls and int(calls[1]) >= 4 * 5  # 4 prompts x 5 steps (PNDM adds a call)
    assert pipe.unet.run.path.name == int8.IR_NAMES["hybrid"] and pipe.unet.run.path.is_file()
    ops = {op.get_type_name() for op in pipe.unet.run.read().get_ops()}
    assert "FakeQuantize" in ops  # activations quantized (the convolutions, the attention matmuls)
    first = image(pipe)
    assert np.isfinite(first).all() and np.array_equal(first, image(pipe))
    assert 1e-4 < np.abs(first - f32).max() < INT8_ATOL


def test_a_second_pipeline_reuses_the_quantized_unet(quantized, tiny):
    _, outcomes = steps(tiny(), "openvino=f32,int8")
    assert outcomes["int8"].applied and "calibrated" not in outcomes["int8"].detail
    assert outcomes["int8"].seconds < quantized[1].seconds


def test_without_a_backend_it_is_skipped_with_the_reason(tiny):
    _, outcomes = steps(tiny(), "int8")
    assert not outcomes["int8"].applied and "put it after `openvino` (NNCF) or `compile`" in outcomes["int8"].detail


def test_without_nncf_it_is_skipped_with_the_install_line(quantized, monkeypatch, tiny):
    f32, _ = steps(tiny(), "openvino=f32")  # the IR the quantized fixture converted, reused
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(int8.Skip, match="pip install .*nncf"):
        int8.apply(f32, None, F32_CPU)


@pytest.mark.slow  # inductor compiles the quantized tiny UNet: ~2 minutes on 2 cores
def test_after_compile_the_unet_is_quantized_by_pt2e_and_stays_close(tiny):
    pytest.importorskip("torchao")
    eager = image(tiny())
    pipe, outcomes = steps(tiny(), "compile,int8")
    assert outcomes["int8"].applied and "PT2E" in outcomes["int8"].detail
    first = image(pipe)
    assert np.isfinite(first).all() and np.array_equal(first, image(pipe))
    assert 1e-4 < np.abs(first - eager).max() < INT8_ATOL


def test_pt2e_needs_an_fp32_unet(tiny):
    pytest.importorskip("torchao")
    _, outcomes = steps(tiny(), "bf16!,compile,int8")
    assert not outcomes["int8"].applied and "drop bf16" in outcomes["int8"].detail


def test_pt2e_refuses_a_recipe_without_cfg(tiny):
    pytest.importorskip("torchao")
    _, outcomes = steps(tiny(), "guidance=1,compile,int8")
    assert not outcomes["int8"].applied and "guidance <= 1" in outcomes["int8"].detail
