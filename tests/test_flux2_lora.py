"""FLUX.2 LoRAs on random:tiny-flux2: kohya's layout (BFL's fused names) and diffusers' make the same image, and they
apply on every eager form of the weights: fused into bf16 weights (put back exactly), beside the weights where those
must not change (weights=int8/int4 rounded, release's mapped read-only)."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sdcpu import load_pipeline, optimize
from sdcpu.errors import UsageError
from sdcpu.families import flux2_layout
from sdcpu.models.loras import Lora
from sdcpu.pipeline import generate, lora

REQUEST = generate.Request("a red cat", steps=2, width=64, height=64, seed=1, guidance=1.0)
RANK = 4  # not a multiple of 3: kohya's fused q/k/v LoRA shares its down matrix (diffusers' sparse case aside)
CHANGED = 10  # 8-bit levels: this rank-4 LoRA of 0.5-scale random matrices moved the tiny image by 40-41 (measured)
# the same dW reached two ways (kohya's alpha scaling on A, diffusers' on B; a fused q/k/v split): float32 rounding
# apart, so the images may differ by one level where a pixel sits on a rounding edge
SAME_ATOL = 1


def write_flux2_loras(transformer, folder, seed) -> tuple[str, str]:
    """One random LoRA on every attention projection of the transformer, written in kohya's layout (BFL's names,
    lora_unet_ prefix, the double blocks' q/k/v as one fused layer; alpha = rank/2) and diffusers' (transformer.,
    split q/k/v; B pre-scaled by that 1/2)."""
    generator = torch.Generator().manual_seed(seed)
    kohya, diffusers = {}, {}

    def pair(inputs, outputs):
        return (0.5 * torch.randn(RANK, inputs, generator=generator),
                0.5 * torch.randn(outputs, RANK, generator=generator))

    def add(original, pieces, down, up):
        key = "lora_unet_" + original.replace(".", "_")
        kohya.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                      f"{key}.alpha": torch.tensor(RANK / 2)})
        for name, piece_up in zip(pieces, up.split(up.shape[0] // len(pieces))):
            diffusers.update({f"transformer.{name}.lora_A.weight": down.clone(),
                              f"transformer.{name}.lora_B.weight": piece_up / 2})

    for i, block in enumerate(transformer.transformer_blocks):
        for fused, pieces in flux2_layout.FUSED.items():
            layer = block.get_submodule(pieces[0])
            add(f"double_blocks.{i}.{fused}", [f"transformer_blocks.{i}.{piece}" for piece in pieces],
                *pair(layer.in_features, 3 * layer.out_features))
        for name, original in (("attn.to_out.0", "img_attn.proj"), ("attn.to_add_out", "txt_attn.proj")):
            layer = block.get_submodule(name)
            add(f"double_blocks.{i}.{original}", [f"transformer_blocks.{i}.{name}"],
                *pair(layer.in_features, layer.out_features))
    for i, block in enumerate(transformer.single_transformer_blocks):
        for name, original in (("attn.to_qkv_mlp_proj", "linear1"), ("attn.to_out", "linear2")):
            layer = block.get_submodule(name)
            add(f"single_blocks.{i}.{original}", [f"single_transformer_blocks.{i}.{name}"],
                *pair(layer.in_features, layer.out_features))
    paths = folder / f"kohya-{seed}.safetensors", folder / f"diffusers-{seed}.safetensors"
    save_file(kohya, paths[0])
    save_file(diffusers, paths[1])
    return str(paths[0]), str(paths[1])


def image(pipe) -> np.ndarray:
    return np.asarray(generate.run(pipe, REQUEST).images[0]).astype(int)


@pytest.fixture(scope="module")
def files(sdcpu_home, tmp_path_factory):
    return write_flux2_loras(load_pipeline("random:tiny-flux2").transformer, tmp_path_factory.mktemp("loras"), 1)


def test_both_layouts_make_the_same_image_fused_or_not_and_none_gives_the_bf16_weights_back(files):
    from peft.tuners.lora import LoraLayer

    pipe, outcomes = optimize(load_pipeline("random:tiny-flux2"), "weights=bf16")  # what auto runs without release
    assert outcomes[0].applied
    weights = {key: p.detach().clone() for key, p in pipe.transformer.named_parameters()}
    base = image(pipe)
    kohya, diffusers = (Lora(path) for path in files)
    assert "peft adapters on the eager transformer:" in lora.use(pipe, (diffusers,))  # FLUX.2's LoRAs: transformer
    assert not any(isinstance(module, LoraLayer) for module in pipe.text_encoder.modules())
    with_lora = image(pipe)
    assert np.abs(with_lora - base).max() > CHANGED
    lora.use(pipe, (kohya,))
    np.testing.assert_allclose(image(pipe), with_lora, rtol=0, atol=SAME_ATOL)
    # fused into the bf16 weights: W + dW rounded to bf16 once, the LoRA's own share moved by that rounding
    assert "fused into their weights" in lora.use(pipe, (kohya,), fuse=True)
    assert np.abs(image(pipe) - with_lora).max() <= 2  # measured 1
    lora.use(pipe, ())
    assert np.array_equal(image(pipe), base)  # the same weights and kernels again
    after = {key.replace(".base_layer", ""): p for key, p in pipe.transformer.named_parameters() if "lora_" not in key}
    assert [key for key, before in weights.items() if not torch.equal(after[key], before)] == []


@pytest.mark.parametrize("recipe, why", [
    ("weights=int8", "rounded to int8"), ("weights=int4", "rounded to int4"), ("release", "read-only (release)")])
def test_weights_that_must_not_change_take_the_lora_beside_them(files, recipe, why):
    pipe, outcomes = optimize(load_pipeline("random:tiny-flux2"), recipe)
    assert outcomes[0].applied, outcomes[0].detail
    layer = pipe.transformer.transformer_blocks[0].attn.to_q
    stored = layer.weight.detach().clone()
    base = image(pipe)
    done = lora.use(pipe, (Lora(files[0]),), fuse=True)  # generate asks for fused: refused in favour of unfused
    assert "unfused" in done and why in done, done
    assert torch.equal(pipe.transformer.transformer_blocks[0].attn.to_q.base_layer.weight, stored)
    assert np.abs(image(pipe) - base).max() > CHANGED
    lora.use(pipe, ())
    assert np.array_equal(image(pipe), base)


def test_the_same_lora_beside_mapped_weights_is_the_one_on_the_weights_as_loaded(files):
    """release computes from the very weights a loaded pipeline holds: the unfused LoRA's image is the same."""
    loaded, released = load_pipeline("random:tiny-flux2"), optimize(load_pipeline("random:tiny-flux2"), "release")[0]
    for pipe in (loaded, released):
        lora.use(pipe, (Lora(files[1], 0.7),))
    np.testing.assert_allclose(image(released), image(loaded), rtol=0, atol=SAME_ATOL)


def test_a_lora_of_another_family_is_one_line_not_a_silent_no_op(tmp_path):
    wrong = tmp_path / "sd.safetensors"  # an SD UNet layer's LoRA: no key diffusers' FLUX.2 loader can place
    layer = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{layer}.lora_down.weight": torch.zeros(RANK, 32), f"{layer}.lora_up.weight": torch.zeros(32, RANK),
               f"{layer}.alpha": torch.tensor(float(RANK))}, wrong)
    pipe = load_pipeline("random:tiny-flux2")
    with pytest.raises(UsageError, match=r"^LoRA 'sd': cannot load it \(none of its keys names a layer of this flux2 "):
        lora.use(pipe, (Lora(str(wrong)),))
    assert lora.use(pipe, ()) == "no LoRA"
