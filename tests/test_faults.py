"""Faults on random:tiny: a process SIGKILLed while it writes into $SDCPU_HOME (an OpenVINO IR conversion, a profile)
leaves its staging behind; the next run removes it, succeeds, and leaves only whole artifacts. Two first conversions
at once convert each component once.

A model build killed mid-write and two first builds at once are in test_random_models.py.

Those writes last milliseconds, too short to catch by polling for the staging: the child kills itself with SIGKILL at
the exact point, just before os.replace puts a named file into place (as a kill, no `finally` of its runs).
"""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdcpu import load_pipeline
from sdcpu.recipes import profiles as profile, Step
from sdcpu.system import hardware

F32_CPU = dataclasses.replace(hardware.detect(), flags=frozenset())  # the f32 precision hint: no bf16 compile

# A child that runs the code of argv[2] in a fresh SDCPU_HOME and SIGKILLs itself when it would os.replace a file
# into the name argv[1].
KILLED_AT = """
import os, signal, sys
from pathlib import Path

replace = os.replace


def replace_or_die(src, dst):
    if Path(dst).name == sys.argv[1]:
        os.kill(os.getpid(), signal.SIGKILL)
    replace(src, dst)


os.replace = replace_or_die
exec(sys.argv[2])
"""

CONVERT = """
from sdcpu import load_pipeline
from sdcpu.backends import openvino
from sdcpu.recipes import Step
from sdcpu.system import hardware
openvino.apply(load_pipeline("random:tiny"), Step("openvino", "f32"), hardware.detect())
"""

# Converts once the file named by argv[1] exists (its imports and model load done), and prints the step's detail.
CONVERT_ON_GO = """
import pathlib, sys, time
from sdcpu import load_pipeline
from sdcpu.backends import openvino
from sdcpu.recipes import Step
from sdcpu.system import hardware
pipe = load_pipeline("random:tiny")
print("ready", flush=True)
while not pathlib.Path(sys.argv[1]).exists():
    time.sleep(0.01)
print(openvino.apply(pipe, Step("openvino", "f32"), hardware.detect()), flush=True)
"""

SAVE_PROFILE = """
import json
from sdcpu.recipes import profiles
profiles.save(*json.loads(sys.argv[3]))
"""


def killed_at(home: Path, name: str, code: str, *args: str) -> int:
    """Run CODE in a child with HOME as SDCPU_HOME, SIGKILLed as it puts a file at NAME; the child's pid."""
    env = {**os.environ, "SDCPU_HOME": str(home)}
    child = subprocess.Popen([sys.executable, "-P", "-c", KILLED_AT, name, code, *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, err = child.communicate(timeout=300)
    assert child.returncode == -signal.SIGKILL, f"not killed at {name}: rc {child.returncode}\n{err[-3000:]}"
    return child.pid


def staging(home: Path) -> list[str]:
    """Everything under HOME that is neither an artifact nor a lock (a staging name starts with a dot)."""
    return sorted(str(p.relative_to(home)) for p in home.rglob(".*") if not p.name.endswith(".lock"))


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SDCPU_HOME", str(tmp_path))
    return tmp_path


IR = ("text_encoder", "unet", "vae")  # in the order the openvino step converts them


@pytest.mark.slow  # 20-40 s each on 2 cores: a child's imports and conversions, then three more conversions here
@pytest.mark.parametrize("name", ["text_encoder.xml", "unet.bin", "unet.xml"])  # the weights in place, or both staged
def test_an_ir_conversion_killed_mid_write_is_converted_again_with_no_staging_left(home, name, tiny):
    pytest.importorskip("openvino")
    from sdcpu.backends import openvino as backend

    component, ext = name.split(".")
    pid = killed_at(home, name, CONVERT)
    (folder,) = [p for p in (home / "openvino").iterdir() if p.name != "compiled"]
    done = IR[:IR.index(component)]
    left = {f".{c}.xml.lock" for c in (*done, component)} | {f"{c}.{e}" for c in done for e in ("xml", "bin")}
    left |= {f".{component}.{pid}.xml", f".{component}.{pid}.bin" if ext == "bin" else f"{component}.bin"}
    assert {p.name for p in folder.iterdir()} == left

    pipe = tiny()
    assert f"IR converted {', '.join(IR[len(done):])} in" in backend.apply(pipe, Step("openvino", "f32"), F32_CPU)
    image = pipe("a ship", num_inference_steps=1, height=64, width=64, output_type="np").images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all() and image.std() > 0  # a picture: [0, 1] by clamp
    assert {p.name for p in folder.iterdir()} == {f"{c}.{e}" for c in IR for e in ("xml", "bin")} | {
        f".{c}.xml.lock" for c in IR}
    assert not staging(home)


@pytest.mark.slow  # about 40 s on 2 cores: two children's imports and conversions
def test_two_first_conversions_at_once_both_succeed_and_convert_each_component_once(home):
    pytest.importorskip("openvino")
    load_pipeline("random:tiny")  # built here first: the children race on the IR alone
    go, env = home / "go", {**os.environ, "SDCPU_HOME": str(home)}
    children = [subprocess.Popen([sys.executable, "-P", "-c", CONVERT_ON_GO, str(go)], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for child in children:
        assert child.stdout.readline() == "ready\n", child.stderr.read()[-3000:]
    go.touch()
    converted = []
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-3000:]
        match = re.search(r"IR (?:converted (.*) in [0-9.]+ s|reused) in ", out)
        converted += match[1].split(", ") if match[1] else []
    assert sorted(converted) == sorted(IR)  # the one waiting for a lock found that component converted
    assert not staging(home)


def test_a_profile_write_killed_mid_write_keeps_the_old_profile_whole_and_the_rerun_replaces_it(tiny, home):
    cpu, workload = hardware.detect(), profile.Workload(profile.unet_hash(tiny().unet.config), "64x64")

    def data(created: str, recipe: str) -> dict:
        return {"key": profile.key(cpu, "high", workload), "created": created, "model": "random:tiny",
                "recipe": recipe, "estimate_s": 1.0, "baseline_s": 3.0, "why": "3.00x, confirmed"}

    old, new = data("2026-01-01T00:00:00+00:00", "baseline"), data("2026-02-01T00:00:00+00:00", "channels_last")
    path = profile.save(old, "# old report")
    pid = killed_at(home, path.name, SAVE_PROFILE, json.dumps([new, "# new report"]))
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        [path.name, path.with_suffix(".md").name, f".{path.name}.lock", f".{path.stem}.{pid}.json.part"])
    assert profile.find(cpu, "high", workload).recipe == "baseline"  # the old profile, whole: auto still reads it

    assert profile.save(new, "# new report") == path
    assert profile.find(cpu, "high", workload).recipe == "channels_last"
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        [path.name, path.with_suffix(".md").name, f".{path.name}.lock"])
    assert path.with_suffix(".md").read_text() == "# new report" and not staging(home)
