"""FLUX.2 [klein]'s memory steps on random:tiny-flux2: `weights=bf16|int8|int4` (weights stored small, float32
compute) and `release` on eager torch (the text encoder's and transformer's weights read in place from their mapped
files, one part resident at a time), each against the model as loaded, on the same noise."""

from pathlib import Path

import numpy as np
import pytest
import torch

from sdcpu import load_pipeline, optimize
from sdcpu.pipeline import generate

REQUEST = generate.Request("a red cat", steps=2, width=64, height=64, seed=1, guidance=1.0)


@pytest.fixture(scope="module")
def as_loaded(sdcpu_home):
    return generate.run(load_pipeline("random:tiny-flux2"), REQUEST).images[0]


def test_bf16_weights_keeps_bf16_weights_and_computes_as_float32_would(sdcpu_home):
    pipe, outcomes = optimize(load_pipeline("random:tiny-flux2"), "weights=bf16")
    assert outcomes[0].applied, outcomes[0].detail
    assert pipe.transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.bfloat16  # stored as loaded
    assert pipe.text_encoder.model.embed_tokens.weight.dtype == torch.bfloat16
    # the networks say float32, so the pipeline keeps its latents and prompt states in float32
    assert pipe.transformer.dtype == pipe.text_encoder.dtype == pipe.vae.dtype == torch.float32
    assert type(pipe.transformer).__name__ == "Flux2Transformer2DModel"  # a saved config names its own class
    upcast = np.asarray(generate.run(pipe, REQUEST).images[0]).astype(int)
    # the random weights were made in bf16: loaded as float32 they are the same numbers, computed the same way
    fp32 = np.asarray(generate.run(load_pipeline("random:tiny-flux2", dtype=torch.float32), REQUEST).images[0])
    assert np.abs(upcast - fp32.astype(int)).max() <= 1  # one 8-bit level: the same arithmetic, up to the kernels


def psnr(image, reference) -> float:
    error = np.mean((np.asarray(image, dtype=float) - np.asarray(reference, dtype=float)) ** 2)
    return float("inf") if error == 0 else 10 * np.log10(255**2 / error)


@pytest.mark.parametrize("form, stored, layer_error, image_db", [
    # a row's int8 levels are its largest magnitude / 127 apart: each weight within half of that, so a layer's output
    # within about 1% of its float32 one on random inputs; 4 bits a group of 32 here (the tiny model's inputs) are
    # 15 levels across the group's range, 10x coarser. The images: 58.5 and 42.3 dB measured (2026-12-05), bounds
    # left wide for other kernels and ISAs
    ("int8", torch.int8, 0.01, 45),
    ("int4", torch.uint8, 0.1, 30),
])
def test_int_weights_round_each_layer_and_keep_the_image(as_loaded, form, stored, layer_error, image_db):
    reference = load_pipeline("random:tiny-flux2", dtype=torch.float32)
    pipe, outcomes = optimize(load_pipeline("random:tiny-flux2"), f"weights={form}")
    assert outcomes[0].applied, outcomes[0].detail
    layer = pipe.transformer.transformer_blocks[0].attn.to_q
    exact = reference.transformer.transformer_blocks[0].attn.to_q
    assert layer.weight.dtype == stored and pipe.text_encoder.model.embed_tokens.weight.dtype == torch.int8
    inputs = torch.randn(16, exact.in_features, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        error = (layer(inputs) - exact(inputs)).norm() / exact(inputs).norm()
    assert 0 < error < layer_error  # rounded, and by no more than its levels allow
    assert pipe.transformer.dtype == torch.float32  # computed in float32: latents and prompt states too
    made = generate.run(pipe, REQUEST).images[0]
    assert image_db < psnr(made, as_loaded) < float("inf")
    _, outcomes = optimize(pipe, "release")  # its rounded weights are not in the model's files
    assert not outcomes[0].applied and "nothing to map" in outcomes[0].detail


def resident_kib(path: Path, start: int | None = None) -> int:
    """This process's resident KiB of its mappings of PATH (/proc/self/smaps), or of its one mapping at START only:
    an earlier test's pipeline, not yet collected, may hold its own mapping of the same file."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0] and len(line.split()) >= 5:
            inside = line.split()[-1] == str(path) and start in (None, int(line.split("-", 1)[0], 16))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_release_on_eager_maps_the_weights_and_drops_a_part_when_another_runs(as_loaded):
    pipe, outcomes = optimize(load_pipeline("random:tiny-flux2"), "release")
    assert outcomes[0].applied, outcomes[0].detail
    folder = Path(pipe.text_encoder.config._name_or_path)
    text_file = next(folder.glob("*.safetensors")).resolve()
    weight = pipe.text_encoder.model.layers[0].self_attn.q_proj.weight
    start, end = _mapping_of(text_file)
    assert start <= weight.data_ptr() < end  # read in place from the file, not copied
    image = generate.run(pipe, REQUEST).images[0]
    assert image.tobytes() == as_loaded.tobytes()  # the same weights, the same kernels: the same image
    # the transformer ran last: the text encoder's pages are out of the process until the next prompt
    assert resident_kib(text_file, start) == 0
    assert generate.run(pipe, REQUEST).images[0].tobytes() == as_loaded.tobytes()  # paged in again, unchanged


def _mapping_of(path: Path) -> tuple[int, int]:
    import gc

    from sdcpu.backends import mapped

    gc.collect()  # pipelines of earlier tests in this worker, unreachable but in reference cycles, map it too
    [(start, end)] = mapped.mappings(path, Path("/proc/self/maps").read_text())
    return start, end


def test_release_on_eager_maps_a_float32_model_and_refuses_what_it_cannot_map(tiny, sdcpu_home):
    pipe, outcomes = optimize(tiny(), "release")  # random:tiny (float32): its UNet's weights map as they are
    assert outcomes[0].applied and "unet" in outcomes[0].detail
    _, outcomes = optimize(load_pipeline("random:tiny-flux2", dtype=torch.float32), "release")
    assert not outcomes[0].applied  # float32 in memory, bf16 in its files: nothing to map
    assert "nothing to release" in outcomes[0].detail


def test_a_replaced_weights_pages_are_dropped_from_its_mapped_file(tmp_path):
    """What weights=int8/int4 does to each loaded weight once rounded: its pages of the model file leave the process,
    though the file stays mapped (other tensors of it live on)."""
    from safetensors.torch import load_file, save_file

    from sdcpu.backends import mapped

    path = tmp_path / "two.safetensors"
    save_file({"big": torch.ones(1 << 22), "kept": torch.ones(1 << 20)}, path)  # 16 MiB and 4 MiB
    loaded = load_file(path)
    assert float(loaded["big"].sum() + loaded["kept"].sum()) == (1 << 22) + (1 << 20)  # every page read in
    before = resident_kib(path.resolve())
    assert before >= 20 * 1024 - 8  # mapped from the file, not copied (else nothing below is dropped)
    dropped = mapped.drop(loaded["big"], mapped.file_spans(".safetensors"))
    assert 16 * 1024 * 1024 - 2 * 4096 <= dropped <= 16 * 1024 * 1024  # its whole pages: all but the edges
    assert before - resident_kib(path.resolve()) >= 16 * 1024 - 8
    assert float(loaded["kept"].sum()) == 1 << 20  # the other tensor of the file untouched
    assert mapped.drop(torch.ones(1 << 20), mapped.file_spans(".safetensors")) == 0  # not a file's: left alone
