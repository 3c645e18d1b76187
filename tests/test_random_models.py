import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sdcpu import load_pipeline
from sdcpu.families import clip, sd
from sdcpu.models import random_models

# A child that imports everything first, says so, then builds random:tiny once the file named by argv[1] exists.
BUILDER = """
import pathlib, sys, time
import diffusers, transformers
from sdcpu import load_pipeline
from sdcpu.models import random_models
print("ready", flush=True)
while not pathlib.Path(sys.argv[1]).exists():
    time.sleep(0.01)
random_models.ensure_built("tiny")
"""


def staging_left(folder: Path) -> list[str]:
    """FOLDER's staging entries beside it (its lock file is not one). Another model's are not looked at: the session's
    home is shared by the test workers, and one may be building another model at the same moment."""
    return [p.name for p in folder.parent.iterdir()
            if p.name.startswith(f".{folder.name}") and not p.name.endswith(".lock")]


def builders(count: int, home: Path, go: Path) -> list[subprocess.Popen]:
    """COUNT builder children with HOME as SDCPU_HOME, each ready (imports done) and waiting for GO."""
    env = {**os.environ, "SDCPU_HOME": str(home)}
    children = [subprocess.Popen([sys.executable, "-P", "-c", BUILDER, str(go)], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(count)]
    for child in children:
        assert child.stdout.readline() == "ready\n", child.stderr.read()
    return children


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


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


def test_cached_folder_loads_back_the_same_weights():
    assert state_hash(load_pipeline("random:tiny")) == state_hash(random_models.build_pipeline("tiny", 0))
    folder = random_models.cache_dir("random-tiny-seed0")
    assert json.loads((folder / random_models.MARKER).read_text())["weights"] == "random"
    assert not staging_left(folder), "no staging folder left behind"


def test_text_encoder_weights_are_keyed_as_in_sd15s_own_files():
    from safetensors import safe_open

    (path,) = (random_models.ensure_built("tiny") / "text_encoder").glob("*.safetensors")
    with safe_open(path, "pt") as weights:
        keys = list(weights.keys())
    assert keys and all(key.startswith("text_model.") for key in keys)


def test_tokenizer_is_clips_own():
    tok = clip.tokenizer()
    assert len(tok) == 49408 and tok.model_max_length == 77
    # ids of the real openai/clip-vit-large-patch14 tokenizer for this prompt
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_sd15_is_the_real_architecture():
    with torch.device("meta"):
        pipe = random_models.build_pipeline("sd15")
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "text_encoder", "vae")}
    assert counts == {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863}
    # what auto's memory estimate reads (sdcpu.recipes.memory) is this architecture's
    assert sd.FAMILY.parameters == {"text": counts["text_encoder"], "denoiser": counts["unet"], "decoder": counts["vae"]}
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


@pytest.mark.slow  # builds random:sd15 (4.3 GB written) and runs its 860M UNet: a minute or two on 2 cores
def test_sd15_builds_and_denoises_one_step(sdcpu_home):
    from sdcpu import load_pipeline
    from sdcpu.pipeline import generate

    pipe = load_pipeline("random:sd15")
    result = generate.run(pipe, generate.Request("a ship", steps=1, width=256, height=256))
    assert result.images[0].size == (256, 256)


def test_two_processes_building_one_model_at_once_both_succeed(tmp_path):
    go = tmp_path / "go"
    children = builders(2, tmp_path, go)
    go.touch()  # both find no model and start at once: one builds, the other waits for its lock, then finds it built
    for child in children:
        assert child.wait(timeout=600) == 0, child.stderr.read()
    folder = tmp_path / "models" / random_models.built_folder("tiny").name
    assert (folder / "model_index.json").is_file() and not staging_left(folder)


def test_a_build_removes_the_staging_of_a_dead_process(tmp_path, monkeypatch):
    monkeypatch.setenv("SDCPU_HOME", str(tmp_path))
    folder = random_models.built_folder("tiny")
    stale = folder.with_name(f".{folder.name}.{dead_pid()}")
    (stale / "unet").mkdir(parents=True)
    (stale / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"half-written")
    assert random_models.ensure_built("tiny") == folder
    assert not staging_left(folder)


def test_a_build_killed_mid_write_is_rebuilt_with_no_staging_left(tmp_path, monkeypatch):
    monkeypatch.setenv("SDCPU_HOME", str(tmp_path))
    folder = random_models.built_folder("tiny")
    go = tmp_path / "go"
    (child,) = builders(1, tmp_path, go)
    go.touch()
    deadline = time.monotonic() + 300
    while not (folder.parent.is_dir() and staging_left(folder)):  # killed as soon as its staging folder appears
        assert child.poll() is None and time.monotonic() < deadline, "the build never staged"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert staging_left(folder) and not folder.exists()
    assert random_models.ensure_built("tiny") == folder
    assert (folder / "model_index.json").is_file() and not staging_left(folder)


def test_a_disk_without_room_for_the_weights_is_refused_before_building(tmp_path, monkeypatch):
    import shutil

    from sdcpu.errors import UsageError

    monkeypatch.setenv("SDCPU_HOME", str(tmp_path))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 10**3, 10**3))
    # random:tiny's weights take ~15 MB: more than the 1 kB left
    with pytest.raises(UsageError, match=r"building random:tiny writes about 0\.0 GB to .*, which has 0\.0 GB free"):
        random_models.ensure_built("tiny", seed=7)
    assert not list(tmp_path.rglob("*.safetensors"))  # nothing written, no staging folder left to trip on
    assert not [p for p in tmp_path.rglob("*") if p.is_dir() and "random-tiny" in p.name]
