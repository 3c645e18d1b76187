"""sdcpu.models.single_file (with SD's layout, sdcpu.families.sd_layout, and FLUX.2's, flux2_layout): a diffusers
folder as one original-layout checkpoint, read back by diffusers' own loader."""

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sdcpu.families import sd_layout
from sdcpu.models import random_models, single_file


@pytest.fixture(scope="module")
def tiny_checkpoint():
    folder = random_models.ensure_built("tiny")
    return folder, single_file.ensure_checkpoint(folder)


def test_round_trip_through_diffusers_single_file_loader_gives_the_same_weights(tiny_checkpoint):
    from diffusers import StableDiffusionPipeline

    folder, path = tiny_checkpoint
    original = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    loaded = StableDiffusionPipeline.from_single_file(str(path), config=str(folder), local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        want, got = getattr(original, name).state_dict(), getattr(loaded, name).state_dict()
        assert sorted(got) == sorted(want), name
        assert [key for key in want if not torch.equal(got[key], want[key])] == [], name


def test_checkpoint_uses_the_original_names_and_conv_shaped_vae_attention(tiny_checkpoint):
    from safetensors import safe_open

    with safe_open(tiny_checkpoint[1], framework="pt") as file:
        keys = set(file.keys())
        assert file.get_slice("first_stage_model.decoder.mid.attn_1.q.weight").get_shape() == [64, 64, 1, 1]
    assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "cond_stage_model"}
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert not [k for k in keys if "down_blocks" in k or "resnets" in k or ("to_q" in k and "first_stage" in k)]


def test_checkpoint_is_reused_until_a_weight_file_changes(tmp_path, tiny_checkpoint):
    folder = tmp_path / "model"
    shutil.copytree(tiny_checkpoint[0], folder)
    first = single_file.ensure_checkpoint(folder)
    stamp = first.stat().st_mtime_ns
    assert single_file.ensure_checkpoint(folder) == first and first.stat().st_mtime_ns == stamp
    weights = next((folder / "vae").glob("*.safetensors"))
    os.utime(weights, ns=(stamp, stamp + 10**9))
    assert single_file.ensure_checkpoint(folder) != first


def test_a_failed_write_leaves_no_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    import safetensors.torch

    def crash(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    target = tmp_path / "model.safetensors"
    with pytest.raises(OSError, match="disk full"):
        single_file.write_atomically({"w": torch.zeros(1)}, target, {})
    assert list(tmp_path.iterdir()) == []


def test_a_weight_with_no_original_place_is_refused_by_name():
    config = json.loads((random_models.ensure_built("tiny") / "unet" / "config.json").read_text())
    names = sd_layout.unet_names(SimpleNamespace(**config))
    with pytest.raises(ValueError, match="add_embedding.linear_1.weight"):
        sd_layout.rename("add_embedding.linear_1.weight", names)


def test_flux2s_transformer_in_bfls_layout_round_trips_through_diffusers_loader():
    """FLUX.2's checkpoint is its transformer under BFL's names (what stable-diffusion.cpp detects klein by: the
    shared modulations, fused q/k/v), in its own bf16; diffusers' single-file converter gives every weight back."""
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder = random_models.ensure_built("tiny-flux2")
    path = single_file.ensure_checkpoint(folder)
    with safe_open(path, framework="pt") as file:
        original = {key: file.get_tensor(key) for key in file.keys()}
        assert json.loads(file.metadata()["sdcpu_scheduler"])["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    assert {"double_stream_modulation_img.lin.weight", "double_blocks.0.img_attn.qkv.weight",
            "single_blocks.0.linear1.weight", "final_layer.adaLN_modulation.1.weight"} <= set(original)
    assert {tensor.dtype for tensor in original.values()} == {torch.bfloat16}
    want = load_file(next((folder / "transformer").glob("*.safetensors")))
    got = convert_flux2_transformer_checkpoint_to_diffusers(dict(original))
    assert sorted(got) == sorted(want)
    assert [key for key in want if not torch.equal(got[key], want[key])] == []
    # the Qwen3 encoder and the VAE are read from the folder's own files
    assert single_file.separate_files(folder) == {
        "llm_path": str(folder / "text_encoder" / "model.safetensors"),
        "vae_path": str(folder / "vae" / "diffusion_pytorch_model.safetensors")}


def test_a_flux2_key_with_no_bfl_name_is_refused_by_name():
    from sdcpu.families import flux2_layout

    with pytest.raises(KeyError, match="pos_embed.weight: no BFL name"):
        flux2_layout.to_original({"pos_embed.weight": torch.zeros(1)})
