"""The stable-diffusion.cpp peer child: its sampler choice, the scheduler it reads from the checkpoint, and (slow, in
its own environment) a real load and image of random:sd15 at f32 and q8_0."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from sdcpu.bench import ladders, peers, sdcpp_child
from sdcpu.families import sd
from sdcpu.models import random_models, single_file

SDCPP = peers.PEERS["stable-diffusion.cpp"]


@pytest.mark.parametrize("arch", ["tiny", "tiny-sdxl-turbo"])
def test_checkpoint_carries_the_folders_scheduler(arch):
    folder = random_models.ensure_built(arch)
    path = single_file.ensure_checkpoint(folder)
    stored = sdcpp_child.checkpoint_scheduler(str(path))
    assert stored == json.loads((folder / "scheduler" / "scheduler_config.json").read_text())


@pytest.mark.parametrize("arch, steps, sampler, comparable", [
    ("tiny-sdxl-turbo", 1, ("euler_a", "simple"), True),  # SDXL-Turbo as run: 1 step, where ancestral adds no noise
    ("tiny-sdxl-turbo", 4, ("euler_a", "simple"), False),
    ("tiny-sdxl", 25, ("euler", "discrete"), False),  # SDXL base: Euler on leading timesteps
    ("tiny-flux2", 4, ("euler", "default"), False),  # FLUX.2: sd.cpp's own flow schedule and noise layout
])
def test_sdcpp_sampler_for_sdxl_and_flux2_checkpoints(arch, steps, sampler, comparable):
    """The sampler sd.cpp runs for SDXL's and SDXL-Turbo's schedulers, read back from their checkpoints."""
    path = single_file.ensure_checkpoint(random_models.ensure_built(arch))
    method, schedule, note = sdcpp_child.sampler_for(sdcpp_child.checkpoint_scheduler(str(path)), steps)
    assert (method, schedule) == sampler
    assert (note is None) == comparable


@pytest.mark.parametrize("scheduler, steps, sampler, comparable", [
    ({"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "trailing"}, 1, ("euler", "simple"), True),
    ({"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "trailing"}, 4, ("euler", "simple"), True),
    ({"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "trailing"}, 3, ("euler", "simple"), False),
    ({"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "linspace"}, 20, ("euler", "discrete"), True),
    ({"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "linspace"}, 1, ("euler", "discrete"), False),
    ({"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "leading"}, 20, ("euler", "discrete"), False),
    ({"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "trailing", "use_karras_sigmas": True}, 4,
     ("euler", "discrete"), False),
    ({"_class_name": "PNDMScheduler", "timestep_spacing": "leading"}, 20, ("ipndm", "discrete"), False),
    ({"_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing"}, 1, ("euler_a", "simple"),
     True),
    ({"_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing"}, 2, ("euler_a", "simple"),
     False),  # the ancestral noise of step 1 on is each engine's own
    ({"_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing"}, 3, ("euler_a", "simple"),
     False),
    ({"_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "linspace"}, 1, ("euler_a", "discrete"),
     False),
])
def test_sdcpp_sampler_and_whether_its_images_compare_with_diffusers(scheduler, steps, sampler, comparable):
    method, schedule, note = sdcpp_child.sampler_for(scheduler, steps)
    assert (method, schedule) == sampler
    assert (note is None) == comparable


def test_a_scheduler_with_no_sdcpp_counterpart_is_refused():
    with pytest.raises(ValueError, match="LCMScheduler"):
        sdcpp_child.sampler_for({"_class_name": "LCMScheduler"}, 4)


needs_sdcpp = pytest.mark.skipif(SDCPP.missing(os.environ) is not None, reason=SDCPP.missing(os.environ) or "")


def run_child(checkpoint: Path, image: Path, weights: str, **protocol) -> tuple[dict, str]:
    """The child's row and stderr for one 256x256 call (and its warm-up) at PROTOCOL, run as the bench runs a peer."""
    spec = {"protocol": ladders.Protocol(width=256, height=256, runs=1, warmup_steps=1, **protocol).to_dict(),
            "image": str(image), "model_path": str(checkpoint), "variant": weights, "threads": 2,
            "random_weights": True}
    done = subprocess.run([str(SDCPP.python(os.environ)), str(Path(sdcpp_child.__file__)), json.dumps(spec)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(peers.SOURCE)},
                          timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.mark.slow  # random:sd15 written as one checkpoint, then sd.cpp loads and runs it: minutes on 2 cores
@needs_sdcpp
@pytest.mark.parametrize("weights", ["f32", "q8_0"])
def test_sdcpp_child_loads_the_sd15_checkpoint_and_makes_an_image(tmp_path, weights):
    from PIL import Image

    checkpoint = single_file.ensure_checkpoint(random_models.ensure_built("sd15"))
    row, log = run_child(checkpoint, tmp_path / "image.png", weights, steps=1)
    assert "not in model file" not in log and "unknown tensor" not in log  # every weight has its place, sd.cpp says
    assert row["recipe_resolved"].startswith("stable-diffusion.cpp") and f"{weights} weights" in row["recipe_resolved"]
    assert row["scheduler"] == "ipndm/discrete" and row["fidelity_note"] and row["steps"][0]["step"] == "load"
    assert len(row["times_s"]) == 1 and row["steps_applied"] == 1 and row["cfg_batch"] == 2
    cpu_avx2 = "avx2" in Path("/proc/cpuinfo").read_text().split()
    assert ("AVX2" in row["ggml_cpu_features"]) == cpu_avx2  # built for this CPU (-march=native), not a generic x86
    with Image.open(tmp_path / "image.png") as image:
        assert (image.size, image.mode) == ((256, 256), "RGB")


@pytest.mark.slow  # random:sd15 in sd.cpp and in diffusers, one step each: a minute or two on 2 cores
@needs_sdcpp
def test_sdcpp_euler_image_is_diffusers_own_for_the_seed(tmp_path):
    """The case fidelity_note is None for: random:sd15 with SD-Turbo's Euler (trailing) scheduler, 1 step, no CFG."""
    from diffusers import EulerDiscreteScheduler
    from PIL import Image

    from sdcpu import load_pipeline
    from sdcpu.bench import fidelity
    from sdcpu.pipeline import generate

    built, folder = random_models.ensure_built("sd15"), tmp_path / "euler"
    folder.mkdir()
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        (folder / name).symlink_to(built / name)
    index = json.loads((built / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    EulerDiscreteScheduler.from_config(sd.TURBO_SCHEDULER).save_config(folder / "scheduler")
    row, _ = run_child(single_file.ensure_checkpoint(folder), tmp_path / "sdcpp.png", "f32", steps=1, guidance=1.0)
    assert row["scheduler"] == "euler/simple" and row["fidelity_note"] is None
    reference = generate.run(load_pipeline(str(folder)), generate.Request(
        ladders.SEED_PROMPT, steps=1, width=256, height=256, guidance=1.0)).images[0]
    # Measured 63 dB. On these random weights another seed gives 13 dB and another prompt with the same noise 40 dB:
    # above 50 dB the noise, the conditioning and the sampler are diffusers' own.
    assert fidelity.psnr(Image.open(tmp_path / "sdcpp.png"), reference) > 50
