"""The `openvino` step on random:tiny: fidelity to eager fp32, a second size, the IR cache, and refusals."""

import dataclasses
import functools
import re
import sys

import numpy as np
import pytest
import torch
from images import REMADE_ALONE_LEVELS, level_difference

from sdcpu import recipes
from sdcpu.backends import openvino as backend
from sdcpu.errors import Skip, UsageError
from sdcpu.recipes import Step
from sdcpu.system import hardware

STEP = Step("openvino")
HERE = hardware.detect()
F32_CPU = dataclasses.replace(HERE, flags=frozenset())  # no native bf16: the f32 precision hint
# Bounds on images in [0, 1], same seed, 3 steps. f32 measured 1.4e-6 max abs (OpenVINO's kernels sum in another
# order); 1e-4 leaves room for other ISAs and thread counts, and fp16 weights (save_model's default) measured 4e-4,
# so it catches them. bf16 measured 1.4e-2 (8 mantissa bits through 3 steps and the VAE); bound 5e-2 as test_steps.
F32_ATOL = 1e-4
BF16_ATOL = 5e-2


def image(pipe, height=64, width=64, **kwargs):
    return pipe("a sailing ship", num_inference_steps=3, height=height, width=width, output_type="np",
                generator=torch.Generator().manual_seed(0), **kwargs).images


@pytest.fixture(scope="module")
def ov(tmp_path_factory):
    """openvino, its convert_model counting calls, and the backend caching into a fresh folder."""
    openvino = pytest.importorskip("openvino")
    calls = []
    convert_model = openvino.convert_model
    home = tmp_path_factory.mktemp("ov-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(openvino, "convert_model", lambda *a, **k: calls.append(a) or convert_model(*a, **k))
        mp.setattr(backend, "sdcpu_home", lambda: home)
        yield openvino, calls, home


@pytest.fixture(scope="module")
def eager(tiny):
    """Eager fp32 images of random:tiny, by size, computed once."""
    pipe = tiny()
    return functools.cache(lambda height=64, width=64: image(pipe, height, width))


@pytest.fixture(scope="module")
def converted(ov, tiny):
    """A random:tiny pipeline on OpenVINO f32, converted first (the cache folder is fresh), and the step's detail."""
    pipe = tiny()
    return pipe, backend.apply(pipe, STEP, F32_CPU)


def test_converts_all_three_components_and_says_so(ov, converted):
    _, calls, home = ov
    pipe, detail = converted
    assert len(calls) == 3
    assert "f32" in detail and "converted text_encoder, unet, vae" in detail
    (folder,) = (p for p in (home / "openvino").iterdir() if p.name != "compiled")
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) == [
        "text_encoder.bin", "text_encoder.xml", "unet.bin", "unet.xml", "vae.bin", "vae.xml"]
    assert not any(isinstance(getattr(pipe, name), torch.nn.Module) for name in ("unet", "vae", "text_encoder"))


def test_f32_image_matches_eager(converted, eager):
    pipe, _ = converted
    np.testing.assert_allclose(image(pipe), eager(), rtol=0, atol=F32_ATOL)


def test_another_size_compiles_again(converted, eager):
    pipe, _ = converted
    image(pipe)
    np.testing.assert_allclose(image(pipe, 64, 48), eager(64, 48), rtol=0, atol=F32_ATOL)
    assert {shapes[0] for shapes in pipe.unet.run.by_shape} >= {(2, 4, 32, 32), (2, 4, 32, 24)}


def test_the_shapes_used_last_stay_compiled_the_least_recently_used_goes(converted, monkeypatch):
    pipe, _ = converted
    monkeypatch.setenv(backend.SHAPES_VARIABLE, "2")
    for height, width in ((64, 64), (64, 48), (64, 64), (48, 64)):  # 64x48 is the one not used since
        image(pipe, height, width)
    assert [shapes[0] for shapes in pipe.unet.run.by_shape] == [(2, 4, 32, 32), (2, 4, 24, 32)]
    assert backend.DEFAULT_SHAPES == 4
    monkeypatch.setenv(backend.SHAPES_VARIABLE, "0")
    with pytest.raises(UsageError, match="SDCPU_OPENVINO_SHAPES='0': a whole number >= 1"):
        backend.kept_shapes()


def test_second_pipeline_reuses_ir_and_compiled_cache(ov, converted, eager, tiny):
    _, calls, home = ov
    image(converted[0])  # compiled at 64x64 once: the blobs are on disk
    before = len(calls)
    pipe = tiny()
    detail = backend.apply(pipe, STEP, F32_CPU)
    assert len(calls) == before and "IR reused" in detail
    assert any((home / "openvino" / "compiled" / "f32").iterdir())
    np.testing.assert_allclose(image(pipe), eager(), rtol=0, atol=F32_ATOL)


def test_a_different_model_gets_its_own_ir(tiny):
    pipe = tiny()
    key = backend.cache_key({"unet": pipe.unet, "vae": pipe.vae}, "v")
    with torch.no_grad():
        pipe.unet.conv_out.bias[0] += 1
    assert backend.cache_key({"unet": pipe.unet, "vae": pipe.vae}, "v") != key
    assert backend.cache_key({"unet": pipe.unet}, "v") != backend.cache_key({"unet": pipe.unet, "vae": pipe.vae}, "v")


@pytest.mark.skipif(not HERE.native_bf16, reason="bf16 kernels need a CPU with native bf16")
def test_bf16_on_native_cpu_stays_close(ov, converted, eager, tiny):
    """bf16 after f32 in the same SDCPU_HOME: OpenVINO 2026.4 keys compiled blobs without the precision, so each
    precision has its own cache folder (a bf16 compile loading an f32 blob with weights returned NaN)."""
    image(converted[0])
    pipe = tiny()
    assert "bf16" in backend.apply(pipe, STEP, HERE)
    error = np.abs(image(pipe) - eager()).max()
    assert 1e-3 < error < BF16_ATOL  # bf16 kernels for real (above f32's error), yet near eager


def test_precision_asked_for_wins_over_the_hardware_default(ov, tiny):
    native = dataclasses.replace(HERE, flags=frozenset({"amx_bf16", "avx512_bf16"}))
    assert ", f32 (asked for)" in backend.apply(tiny(), Step("openvino", "f32"), native)
    detail = backend.apply(tiny(), Step("openvino", "bf16"), F32_CPU)
    assert ", bf16 (asked for; this CPU has no native bf16" in detail


def test_unsupported_options_and_sizes_are_refused(converted):
    pipe, _ = converted
    with pytest.raises(NotImplementedError, match="clip_skip"):
        image(pipe, clip_skip=1)
    with pytest.raises(ValueError, match="divisible by 2"):  # the tiny UNet halves its latent once
        pipe.unet(torch.randn(2, 4, 9, 9), 10, torch.randn(2, 77, 32), return_dict=False)


def test_skipped_with_the_reason_under_a_preloaded_allocator(monkeypatch, tiny):
    monkeypatch.setattr(backend, "mapped_paths", lambda text: ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",))
    with pytest.raises(Skip, match=re.escape(f"jemalloc is preloaded in this process: {recipes.PRELOADED_ALLOCATOR};")):
        backend.apply(tiny(), STEP, F32_CPU)


def test_skipped_with_the_install_line_without_openvino(monkeypatch, tiny):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(Skip, match="pip install .*openvino"):
        backend.apply(tiny(), STEP, F32_CPU)


def test_a_disk_without_room_for_the_ir_is_refused_in_one_line_before_converting(tiny, tmp_path, monkeypatch):
    import shutil

    pytest.importorskip("openvino")
    monkeypatch.setattr(backend, "sdcpu_home", lambda: tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 10**6, 10**6))
    with pytest.raises(UsageError, match=r"converting text_encoder to OpenVINO writes about 0\.\d GB to .*, which has "
                                         r"0\.0 GB free"):
        backend.apply(tiny(), STEP, F32_CPU)
    assert not list(tmp_path.rglob("*.xml")) and not list(tmp_path.rglob("*.bin"))  # nothing half-written


def test_after_bf16_converts_from_the_cast_weights(ov, tiny):
    pipe = tiny()
    pipe.to(dtype=torch.bfloat16)  # what the bf16 step did before
    detail = backend.apply(pipe, STEP, F32_CPU)
    assert "converted from the bfloat16 torch weights, kept so in the IR" in detail
    ops = pipe.unet.run.read().get_ops()
    constants = {str(op.get_element_type()) for op in ops if op.get_type_name() == "Constant"}
    assert "<Type: 'bfloat16'>" in constants  # the weights as they were, no float32 copy made to trace them
    assert np.isfinite(image(pipe)).all()


def test_a_batch_is_decoded_one_image_at_a_time(converted):
    """generate.run_batch decodes one image at a time (a batch of n 1024x1024 images needs one image's VAE memory): on
    OpenVINO the VAE is compiled for one latent only, and the batch's images are those each makes alone."""
    from sdcpu.pipeline.generate import Request, run_batch

    pipe, _ = converted
    pipe.vae.run.release()
    batch = run_batch(pipe, [Request("a sailing ship", steps=2, width=64, height=64, seed=seed) for seed in (1, 2)])
    assert [shapes[0] for shapes in pipe.vae.run.by_shape] == [(1, 4, 32, 32)]
    alone = run_batch(pipe, [Request("a sailing ship", steps=2, width=64, height=64, seed=2)])
    # the UNet's batch of 2 vs 1 sums in another order: the bound of the project's cross-batch comparisons
    assert level_difference(batch.images[1], alone.images[0]) <= REMADE_ALONE_LEVELS


def test_a_large_image_decodes_in_tiles_of_one_compiled_shape(converted, monkeypatch):
    """Over $SDCPU_VAE_TILE pixels a side the VAE decodes a tile at a time (sdcpu.pipeline.vae_tiles): on OpenVINO
    every tile has the same static shape, compiled once."""
    from sdcpu.pipeline.generate import Request, run_batch

    pipe, _ = converted
    pipe.vae.run.release()
    monkeypatch.setenv("SDCPU_VAE_TILE", "128")
    result = run_batch(pipe, [Request("a sailing ship", steps=2, width=256, height=128, seed=1)])
    assert result.images[0].size == (256, 128)
    factor = pipe.vae_scale_factor  # random:tiny's VAE: 2
    assert [shapes[0] for shapes in pipe.vae.run.by_shape] == [(1, 4, 128 // factor, 128 // factor)]
