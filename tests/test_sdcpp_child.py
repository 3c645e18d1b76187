"""The stable-diffusion.cpp peer child: its sampler choice, the scheduler it reads from the checkpoint, and (slow, in
its own environment) a real load and image of random:sd15 at f32 and q8_0."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from sdcpu import random_models, single_file
from sdcpu.bench import ladders, sdcpp_child

SOURCE = Path(single_file.__file__).resolve().parents[1]
SDCPP_PYTHON = Path(os.environ.get("SDCPU_SDCPP_PYTHON", SOURCE.parent / ".venv-sdcpp" / "bin" / "python"))


def test_checkpoint_carries_the_folders_scheduler():
    folder = random_models.ensure_built("tiny")
    path = single_file.ensure_checkpoint(folder)
    stored = sdcpp_child.checkpoint_scheduler(str(path))
    assert stored == json.loads((folder / "scheduler" / "scheduler_config.json").read_text())


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
])
def test_sdcpp_sampler_and_whether_its_images_compare_with_diffusers(scheduler, steps, sampler, comparable):
    method, schedule, note = sdcpp_child.sampler_for(scheduler, steps)
    assert (method, schedule) == sampler
    assert (note is None) == comparable


def test_a_scheduler_with_no_sdcpp_counterpart_is_refused():
    with pytest.raises(ValueError, match="LCMScheduler"):
        sdcpp_child.sampler_for({"_class_name": "LCMScheduler"}, 4)


@pytest.mark.slow
@pytest.mark.skipif(not SDCPP_PYTHON.is_file(), reason=f"no stable-diffusion.cpp environment at {SDCPP_PYTHON} "
                    "(scripts/setup-sdcpp.sh, or set SDCPU_SDCPP_PYTHON)")
@pytest.mark.parametrize("weights", ["f32", "q8_0"])
def test_sdcpp_child_loads_the_sd15_checkpoint_and_makes_an_image(tmp_path, weights):
    from PIL import Image

    path = single_file.ensure_checkpoint(random_models.ensure_built("sd15"))
    protocol = ladders.Protocol(width=256, height=256, steps=1, runs=1, warmup_steps=1).to_dict()
    spec = {"protocol": protocol, "image": str(tmp_path / "image.png"), "model_path": str(path), "weights": weights,
            "threads": 2, "random_weights": True}
    done = subprocess.run([str(SDCPP_PYTHON), str(Path(sdcpp_child.__file__)), json.dumps(spec)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(SOURCE)}, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "not in model file" not in done.stderr and "unknown tensor" not in done.stderr  # every weight has its place
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["recipe_resolved"].startswith("stable-diffusion.cpp") and f"{weights} weights" in row["recipe_resolved"]
    assert row["scheduler"] == "ipndm/discrete" and row["fidelity_note"] and row["steps"][0]["step"] == "load"
    assert len(row["times_s"]) == 1 and row["steps_applied"] == 1 and row["cfg_batch"] == 2
    assert Image.open(spec["image"]).size == (256, 256)
