import hashlib
import json

import pytest
import torch

from sdcpu import random_models


def state_hash(pipe) -> str:
    digest = hashlib.sha256()
    for name in ("unet", "vae", "text_encoder"):
        for key, tensor in sorted(getattr(pipe, name).state_dict().items()):
            digest.update(f"{name}.{key}".encode())
            digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_same_seed_gives_bit_identical_weights_and_another_seed_does_not():
    first, again, other = (random_models.build_pipeline("tiny", seed) for seed in (0, 0, 1))
    assert state_hash(first) == state_hash(again)
    assert state_hash(first) != state_hash(other)


def test_cached_folder_loads_back_the_same_weights(tiny_pipe):
    assert state_hash(tiny_pipe) == state_hash(random_models.build_pipeline("tiny", 0))
    folder = random_models.cache_dir("random-tiny-seed0")
    assert json.loads((folder / random_models.MARKER).read_text())["weights"] == "random"
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "no staging folder left behind"


def test_text_encoder_weights_are_keyed_as_in_sd15s_own_files(tiny_pipe):
    from safetensors import safe_open

    (path,) = (random_models.cache_dir("random-tiny-seed0") / "text_encoder").glob("*.safetensors")
    with safe_open(path, "pt") as weights:
        keys = list(weights.keys())
    assert keys and all(key.startswith("text_model.") for key in keys)


def test_tokenizer_is_clips_own():
    tok = random_models.clip_tokenizer()
    assert len(tok) == 49408 and tok.model_max_length == 77
    # ids of the real openai/clip-vit-large-patch14 tokenizer for this prompt
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_sd15_is_the_real_architecture():
    with torch.device("meta"):
        pipe = random_models.build_pipeline("sd15")
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "text_encoder", "vae")}
    assert counts == {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863}
    assert pipe.vae.config.scaling_factor == 0.18215
    assert pipe.text_encoder.config.max_position_embeddings == 77
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"


def test_sd_turbo_is_sd21s_architecture_with_a_one_step_schedule():
    with torch.device("meta"):
        pipe = random_models.build_pipeline("sd-turbo")
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "text_encoder", "vae")}
    assert counts == {"unet": 865_910_724, "text_encoder": 340_387_840, "vae": 83_653_863}
    assert pipe.unet.config.use_linear_projection and pipe.unet.config.cross_attention_dim == 1024
    pipe.scheduler.set_timesteps(1)
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler" and pipe.scheduler.timesteps.tolist() == [999]


def test_config_folder_has_configs_and_no_weights():
    folder = random_models.ensure_config_folder("sd15")
    assert json.loads((folder / "unet" / "config.json").read_text())["cross_attention_dim"] == 768
    assert (folder / "tokenizer" / "tokenizer_config.json").is_file()
    assert not list(folder.rglob("*.safetensors"))


@pytest.mark.slow
def test_sd15_builds_and_denoises_one_step(sdcpu_home):
    from sdcpu import generate, load_pipeline

    pipe = load_pipeline("random:sd15")
    result = generate.run(pipe, generate.Request("a ship", steps=1, width=256, height=256))
    assert result.images[0].size == (256, 256)
