"""Tuned profiles: keying, matching, and auto's use of them (or its fallback to the class rules)."""

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from machines import machine
from sdcpu.recipes import auto, profiles as profile

SPR = machine("spr-2s-amx")
TINY = profile.Workload("3fdbfbafd0e0", "64x64")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SDCPU_HOME", str(tmp_path))
    return tmp_path


def write(cpu=SPR, quality="high", workload=TINY, recipe="iomp,pin,openvino=bf16", created="2026-11-26T10:00:00+00:00"):
    return profile.save({"key": profile.key(cpu, quality, workload), "created": created, "model": "random:tiny",
                         "recipe": recipe, "estimate_s": 1.0, "baseline_s": 3.0, "why": "3.00x, confirmed"}, "# report")


def test_a_profile_is_json_with_its_report_beside_it(home):
    path = write()
    assert path.parent == home / "profiles" and path.name.startswith("random-tiny-64x64-high-")
    data = json.loads(path.read_text())
    assert data["key"]["machine"] == {"cpu": SPR.model_name, "arch": "x86_64", "usable_physical_cores": 32,
                                      "usable_cpus": 64}
    assert set(data["key"]["versions"]) == {"torch", "openvino"} and data["key"]["workload"] == dataclasses.asdict(TINY)
    assert path.with_suffix(".md").read_text() == "# report" and data["report"] == path.with_suffix(".md").name


def test_matches_only_the_same_machine_model_size_quality_and_versions(home, monkeypatch):
    path = write()
    assert profile.find(SPR, "high", TINY).path == path
    assert profile.find(SPR, "fast", TINY).path == path  # fast adds its steps on the high profile
    assert profile.find(SPR, "exact", TINY) is None  # a bf16 profile never serves auto:exact
    assert profile.find(machine("xeon-1s-smt"), "high", TINY) is None  # another CPU
    fewer = dataclasses.replace(SPR, affinity=frozenset(range(16)))
    assert profile.find(fewer, "high", TINY) is None  # the same CPU with fewer usable cores
    assert profile.find(SPR, "high", profile.Workload("another-unet", "64x64")) is None
    assert profile.find(SPR, "high", profile.Workload(TINY.unet, "512x512")) is None
    monkeypatch.setattr(profile, "versions", lambda: {"torch": "2.99.0", "openvino": None})
    assert profile.find(SPR, "high", TINY) is None


def test_without_a_model_the_most_recent_profile_for_the_machine_serves(home):
    write(created="2026-11-26T10:00:00+00:00")
    newer = write(workload=profile.Workload("sd15-unet", "512x512"), created="2026-11-26T11:00:00+00:00")
    (home / "profiles" / "broken.json").write_text("{not json")
    assert profile.find(SPR, "high").path == newer


def test_auto_uses_a_matching_profile_and_says_so(home):
    path = write()
    recipe, reasons = auto.recipe(SPR, {}, workload=TINY)
    assert str(recipe) == "iomp,pin,openvino=bf16" and recipe.name == "auto"
    assert reasons[0].startswith(f"tuned profile {path}") and "not known here" not in reasons[0]
    fast, why = auto.recipe(SPR, {}, quality="fast", workload=TINY)
    assert str(fast) == "iomp,pin,openvino=bf16,int8,tiny-vae" and why[1].startswith("quality fast, on top of the profile")
    options, system = auto.system_options(SPR, {}, {}, frozenset())
    assert (options.openmp, options.pin, options.allocator) == ("iomp", True, "default")
    assert "not known here: the most recent profile" in system[0]


def test_without_a_profile_auto_falls_back_to_hardware_rules_and_says_so(home, installed):
    installed("openvino", "nncf")  # the class's rules then take OpenVINO: at `exact`, in f32
    write()
    recipe, reasons = auto.recipe(SPR, {}, quality="exact", workload=TINY)
    assert reasons[0] == auto.NO_PROFILE and "sdcpu tune" in reasons[0]
    assert not recipe.get("bf16") and recipe.get("openvino").value == "f32"
    other = profile.Workload("another-unet", "64x64")
    assert auto.recipe(SPR, {}, workload=other)[1][0] == auto.NO_PROFILE


def test_workload_of_reads_the_unet_config_without_loading_the_model(home, tiny, monkeypatch):
    assert profile.workload_of("random:tiny", 64, 48) is None  # not built in this SDCPU_HOME: unknown
    monkeypatch.undo()  # the session's SDCPU_HOME, where the tiny fixture built random:tiny
    assert profile.workload_of("random:tiny", 64, 48) == profile.Workload(profile.unet_hash(tiny().unet.config),
                                                                          "64x48")
    assert profile.workload_of("random:sd99", 64, 64) is None and profile.workload_of("/no/such", 64, 64) is None


FIXTURES = Path(__file__).parent / "fixtures" / "profiles"


def test_a_malformed_profile_is_ignored_with_one_warning(home, caplog):
    data = json.loads((FIXTURES / "malformed.json").read_text())  # no `created`, a string estimate
    data["key"] = profile.key(SPR, "high", TINY)  # it matches here: only its malformed fields can rule it out
    (home / "profiles").mkdir()
    (home / "profiles" / "malformed.json").write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="sdcpu.recipes.profiles"):
        for _ in range(2):
            assert auto.recipe(SPR, {}, workload=TINY)[1][0] == auto.NO_PROFILE
        good = write(created="2026-11-26T12:00:00+00:00")
        assert auto.recipe(SPR, {}, workload=TINY)[1][0].startswith(f"tuned profile {good}")
    (warning,) = caplog.messages
    assert "malformed.json: created is missing or not a string; ignored" in warning
    assert profile.malformed({**data, "created": "2026", "estimate_s": 1.0, "recipe": "nonsense"}).startswith("recipe")
