import pytest

from sdcpu import models
from sdcpu.errors import UsageError
from sdcpu.models import state


@pytest.mark.parametrize(
    "spec, message",
    [
        ("random:sd99", "unknown random architecture"),
        ("./no/such/folder", "no such file or folder"),
        ("missing.safetensors", "no such file"),
    ],
)
def test_bad_specs_are_refused_with_a_reason(spec, message):
    with pytest.raises(UsageError, match=message):
        models.parse_spec(spec)


def test_folder_without_model_index_is_refused(tmp_path):
    with pytest.raises(UsageError, match="not a diffusers pipeline folder"):
        models.parse_spec(str(tmp_path))


@pytest.mark.parametrize("suffix", [".ckpt", ".bin"])
def test_pickle_needs_consent(tmp_path, suffix):
    checkpoint = tmp_path / f"model{suffix}"
    checkpoint.write_bytes(b"not really a pickle")
    with pytest.raises(UsageError, match="--trust-pickle"):
        models.parse_spec(str(checkpoint))
    assert models.parse_spec(str(checkpoint), trust_pickle=True) == models.ModelSpec("file", str(checkpoint))


def test_hub_id_is_recognised_and_fails_cleanly_offline():
    spec = models.parse_spec("someone/some-model")
    assert spec.kind == "hub" and not spec.random_weights
    with pytest.raises(UsageError, match="cannot load 'someone/some-model' from the Hugging Face hub"):
        models.load_pipeline(spec)


def test_random_folder_loaded_by_path_still_says_random():
    from sdcpu.models import random_models

    spec = models.parse_spec(str(random_models.ensure_built("tiny")))
    assert spec.kind == "folder" and spec.random_weights
    pipe = models.load_pipeline(spec)
    assert type(pipe).__name__ == "StableDiffusionPipeline"


def test_a_path_that_looks_like_a_hub_id_is_a_path_where_its_folder_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(UsageError, match="models/sd15: no such folder .read as a path, not a hub id"):
        models.parse_spec("models/sd15")
    assert models.parse_spec("org/name").kind == "hub"  # no folder org here: a hub id


def test_pickle_weights_in_a_folder_load_only_with_trust_pickle(tiny, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    from sdcpu.models import random_models

    folder = tmp_path / "model"
    shutil.copytree(random_models.built_folder("tiny"), folder)
    (weights,) = (folder / "unet").glob("*.safetensors")
    torch.save(load_file(weights), folder / "unet" / "diffusion_pytorch_model.bin")  # only a pickle left
    weights.unlink()
    with pytest.raises(UsageError, match=r"model: .*\(.bin pickle weights load only with --trust-pickle\)"):
        models.load_pipeline(str(folder))
    trusted = models.load_pipeline(str(folder), trust_pickle=True)
    assert torch.equal(trusted.unet.conv_in.weight, tiny().unet.conv_in.weight)


@pytest.mark.parametrize("marker", ["{", "[1]", '{"spec": "random:tiny"}'])
def test_a_malformed_random_marker_is_refused_in_one_line(tmp_path, marker):
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (tmp_path / "sdcpu.json").write_text(marker)
    with pytest.raises(UsageError, match=r"sdcpu\.json: not the marker sdcpu writes .*; remove it, or rebuild") as err:
        models.parse_spec(str(tmp_path))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("index, message", [
    ('{"_class_name": "FluxPipeline"}', r"FluxPipeline is of no model family sdcpu runs "
                                        r"\(sd: Stable Diffusion 1.x and 2.x.*; sdxl: Stable Diffusion XL"),
    ("{}", r"model_index.json: not a diffusers model_index.json \(KeyError"),
    ("[", r"model_index.json: not a diffusers model_index.json \(JSONDecodeError"),
])
def test_a_folder_of_no_family_sdcpu_runs_is_refused_before_it_loads(tmp_path, index, message):
    (tmp_path / "model_index.json").write_text(index)  # no weights at all: the refusal comes before any load
    with pytest.raises(UsageError, match=message) as err:
        models.parse_spec(str(tmp_path))
    assert "\n" not in str(err.value)


def test_the_tiny_fixture_gives_a_fresh_pipeline_each_call_as_a_load_gives_it(tiny):
    """conftest's `tiny`: each call a pipeline of its own, equal to `load_pipeline("random:tiny")`, whatever a test
    did to another (a recipe's scheduler and defaults, changed weights)."""
    import torch

    from sdcpu import optimize

    used = tiny()
    optimize(used, "scheduler=ddim,steps=3")
    with torch.no_grad():
        used.unet.conv_in.weight += 1
    fresh, loaded = tiny(), models.load_pipeline("random:tiny")
    assert type(fresh.scheduler) is type(loaded.scheduler) is not type(used.scheduler)
    mine = state.of(fresh)
    assert mine is not state.of(used) and mine.defaults == {} and mine.recipe is None
    assert mine.runtime is state.Runtime.EAGER and mine.model == state.of(loaded).model
    for name in ("unet", "vae", "text_encoder"):
        mine, theirs = getattr(fresh, name).state_dict(), getattr(loaded, name).state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[key], theirs[key]) for key in mine), name
    assert fresh.tokenizer is not used.tokenizer and fresh.unet is not used.unet
