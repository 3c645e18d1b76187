"""`sdcpu tune` for real on random:tiny: it writes a valid profile, and auto (info, generate) then reports using it."""

import json
import os
import subprocess
import sys

import pytest

from sdcpu import recipes
from sdcpu.cli import main


def test_tune_writes_a_profile_that_info_and_generate_then_use(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SDCPU_HOME", str(tmp_path))  # the profile must not leak into the other tests' auto
    assert main(["tune", "--model", "random:tiny", "--budget", "0.5"]) == 0
    out = capsys.readouterr().out
    (path,) = (tmp_path / "profiles").glob("*.json")
    data = json.loads(path.read_text())
    assert data["key"]["workload"]["size"] == "64x64" and data["key"]["quality"] == "high"
    recipes.parse(data["recipe"])  # a recipe auto can run
    assert data["results"][0]["recipe"] == "baseline" and data["results"][0]["status"] == "measured"
    assert len(data["results"][0]["samples_s"]) >= 2 and data["baseline_s"] > 0
    report = path.with_suffix(".md").read_text()
    assert "| # | changed | recipe |" in report and "**Choice:" in report and report in out
    assert all(r["status"].startswith(("measured", "skipped", "failed")) for r in data["results"])

    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["profile"] == str(path) and info["auto"]["reasons"][0].startswith(f"tuned profile {path}")

    generated = subprocess.run(
        [sys.executable, "-m", "sdcpu", "generate", "x", "--model", "random:tiny", "--size", "64x64", "--steps", "1",
         "-o", str(tmp_path / "x.png")], capture_output=True, text=True, env=os.environ)
    assert generated.returncode == 0, generated.stderr
    assert f"auto: tuned profile {path}" in generated.stdout and "not known here" not in generated.stdout


@pytest.mark.parametrize("args, message", [
    (["--budget", "0"], "expected minutes > 0"),
    (["--size", "60x64"], "width 60: must be a multiple of 8"),
    (["--size", "big"], "expected WIDTHxHEIGHT"),
    (["--model", "random:sd99"], "unknown random architecture"),
    (["--repeats", "1"], "--repeats at least 2"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    assert cli(["tune", "--model", "random:tiny", *args]) == 2  # the tiny model, should a check ever slip
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def cli(argv) -> int:
    """main()'s exit code, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def test_a_probe_runs_under_its_launch_plan_and_reports_a_skipped_step():
    import importlib.util

    from sdcpu.system import hardware
    from sdcpu.tune import probe

    if importlib.util.find_spec("intel_extension_for_pytorch"):
        pytest.skip("ipex is installed here: its step would apply")
    spec = {"model": "random:tiny", "size": [64, 64], "repeats": 2}
    row, wall = probe.run("jemalloc=default,pin,ipex", spec, hardware.detect(), os.environ, 120)
    result = probe.to_result(("x",), row, wall, steps=20)
    assert row["verify_failures"] == [] and row["threads"] >= 1  # the plan took effect in the child
    assert result.status.startswith("skipped: ipex: intel_extension_for_pytorch is not installed")
    assert len(row["unet_s"]) == 2 and row["first_call_s"] > 0 and wall > row["compute_s"]


@pytest.mark.parametrize("arch, steps", [("tiny-sdxl-turbo", 1), ("tiny-sdxl", 25), ("tiny", 20)])
def test_the_estimates_steps_are_the_models_unless_given(monkeypatch, arch, steps):
    from sdcpu.cli import build_parser
    from sdcpu.commands import tune

    args = build_parser().parse_args(["tune", "--model", f"random:{arch}"])
    monkeypatch.setattr(tune.hardware, "detect", lambda: (_ for _ in ()).throw(SystemExit("past the checks")))
    with pytest.raises(SystemExit, match="past the checks"):
        tune.run(args)
    assert args.steps == steps  # before: SD's 20 for every model
