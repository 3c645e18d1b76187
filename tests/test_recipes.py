import pytest

from sdcpu import recipes
from sdcpu.errors import UsageError


def test_named_rungs_are_cumulative():
    rungs = [recipes.parse(name).steps for name in ("baseline", "system", "framework", "seed")]
    assert rungs[0] == ()
    for lower, higher in zip(rungs, rungs[1:]):
        assert higher[: len(lower)] == lower and len(higher) > len(lower)
    assert str(recipes.parse("seed")) == "jemalloc,iomp,pin,channels_last,bf16,compile,scheduler=dpm++"


def test_custom_recipe_parses_values_force_and_groups():
    recipe = recipes.parse("tcmalloc, threads=4,bf16!,scheduler=dpm++,steps=8,guidance=1.5")
    assert recipe.name == "custom"
    assert [str(s) for s in recipe.steps] == ["tcmalloc", "threads=4", "bf16!", "scheduler=dpm++", "steps=8", "guidance=1.5"]
    assert recipe.get("bf16").forced and recipe.get("threads").value == 4 and recipe.get("guidance").value == 1.5
    assert [s.name for s in recipe.group("system")] == ["tcmalloc", "threads"]
    assert [s.name for s in recipe.group("algorithm")] == ["scheduler", "steps", "guidance"]


def test_optional_value_may_be_left_out():
    plain, exact = recipes.parse("openvino").steps[0], recipes.parse("openvino=f32").steps[0]
    assert (plain.value, str(plain)) == (None, "openvino")
    assert (exact.value, str(exact)) == ("f32", "openvino=f32")


def test_json_round_trip():
    recipe = recipes.parse("jemalloc,iomp,pin,instances=2,channels_last,bf16!,compile")
    assert recipes.Recipe.from_json(recipe.to_json()) == recipe


@pytest.mark.parametrize(
    "text, message",
    [
        ("turbo", "unknown recipe step 'turbo'"),
        ("pin=3", "takes no value"),
        ("threads", "needs a value"),
        ("threads=0", "whole number >= 1"),
        ("guidance=-1", "number >= 0"),
        ("scheduler=warp", "unknown scheduler 'warp'"),
        ("openvino=fp8", "f32 or bf16"),
        ("bf16,bf16", "more than once"),
        ("jemalloc,tcmalloc", "cannot combine tcmalloc and jemalloc: one process has one allocator"),
        ("tcmalloc,iomp,openvino", "cannot combine tcmalloc and openvino: OpenVINO 2026.4's CPU plugin aborts"),
        ("auto", "depends on the machine"),
    ],
)
def test_bad_recipes_are_refused(text, message):
    with pytest.raises(UsageError, match=message):
        recipes.parse(text)


def test_launch_options_from_system_steps():
    options = recipes.launch_options(recipes.parse("tcmalloc,iomp,threads=3,pin,instances=2,bf16"))
    assert (options.allocator, options.openmp, options.threads, options.pin, options.instances) == ("tcmalloc", "iomp", 3, True, 2)
    plain = recipes.launch_options(recipes.parse("baseline"))
    assert (plain.allocator, plain.openmp, plain.threads, plain.pin, plain.instances) == ("default", None, None, False, 1)
    # OpenVINO's threads would inherit the main thread's one bound core: a recipe with it pins without binding
    assert plain.bind_threads and not recipes.launch_options(recipes.parse("iomp,pin,openvino")).bind_threads


def test_system_steps_are_the_launch_options_inverse():
    assert all(k.launch for k in recipes.STEP_KINDS.values() if k.group == "system")
    for text in ("baseline", "tcmalloc,iomp,threads=3,pin,instances=2", "jemalloc=default,pin", "jemalloc,iomp"):
        recipe = recipes.parse(text)
        assert recipes.system_steps(recipes.launch_options(recipe)) == recipe.group("system")


def test_each_ladder_entry_is_its_own_step():
    laddered = {name: k.ladder for name, k in recipes.STEP_KINDS.items() if k.ladder is not None}
    assert laddered  # the full ladder's steps declare their entries here
    assert {name: recipes.Step.parse(ladder).name for name, ladder in laddered.items()} == {n: n for n in laddered}


def test_a_step_added_to_the_table_appears_in_the_full_ladder_tune_and_auto_fast(monkeypatch):
    """Two dummy steps, declared in STEP_KINDS only: a backend (`warp`) and a work-cutting step (`skim`)."""
    import dataclasses
    from types import SimpleNamespace

    from machines import machine
    from sdcpu.bench import ladders
    from sdcpu.recipes import auto, auto_rules
    from sdcpu.tune import space

    monkeypatch.setitem(recipes.STEP_KINDS, "warp", recipes.StepKind("framework", summary="a dummy backend",
                                                                     role="backend", ladder="warp"))
    monkeypatch.setitem(recipes.STEP_KINDS, "skim", recipes.StepKind("algorithm", summary="a dummy cut",
                                                                     ladder="skim", cuts_work=True))
    cpu = machine("spr-2s-amx")

    gen = ladders.rungs("full", cpu)
    names = [next(gen).name]
    while True:  # every rung fails: nothing is kept, each step is tried on the system rung
        try:
            names.append(gen.send({"failed": "dummy"}).name)
        except StopIteration:
            break
    assert names == ["baseline", "+system", "+channels_last", "+bf16", "+compile", "+openvino", "+ipex",
                     "+scheduler=dpm++", "+warp", "+int8", "+tiny-vae", "+skim", "+lcm-lora", "+deepcache=2", "+tome"]

    built = space.build(cpu, {}, frozenset(), set(), "high")
    assert built.dimensions[built.index("backend")].options == ("eager", "compile", "warp")
    assert built.recipe(built.with_option(built.default, "backend", "warp")) == "warp"

    klass = dataclasses.replace(auto_rules.cpu_class(cpu), fast=(auto_rules.Candidate("bf16,skim", "a dummy cut"),))
    monkeypatch.setattr(auto_rules, "cpu_class", lambda _: klass)
    monkeypatch.setattr(auto.profiles, "find", lambda *_: SimpleNamespace(recipe="bf16", reason=lambda _: "tuned"))
    assert str(auto.recipe(cpu, {}, quality="fast")[0]) == "bf16,skim"


def test_auto_reads_profiles_without_importing_tune():
    """auto, which every command resolves a recipe with, finds a tuned profile through sdcpu.recipes.profiles: a fresh
    interpreter resolving an auto recipe, profile found, never imports sdcpu.tune (its search and probes)."""
    import subprocess
    import sys

    code = """
import sys
from types import SimpleNamespace
from sdcpu.recipes import auto
from sdcpu.system import hardware
auto.profiles.find = lambda *_: SimpleNamespace(recipe="bf16", reason=lambda _: "tuned")
recipe, reasons = auto.recipe(hardware.detect(), {})
assert str(recipe) == "bf16" and "tuned" in reasons, (recipe, reasons)
print(sorted(name for name in sys.modules if name.startswith("sdcpu")))
"""
    done = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = eval(done.stdout.strip().splitlines()[-1])
    assert "sdcpu.recipes.auto" in loaded and "sdcpu.recipes.profiles" in loaded
    assert not [name for name in loaded if name == "sdcpu.tune" or name.startswith("sdcpu.tune.")]


@pytest.mark.parametrize("rule", recipes.CONFLICTS, ids=lambda rule: rule.step)
def test_each_conflict_rule_gives_its_one_reason_wherever_it_refuses(rule):
    """A rule's reason, stated once in recipes.CONFLICTS, is the text the parser refuses with and the one `conflict`
    gives auto, the bench ladders and tune's search (their own tests check they pass it on)."""
    import re

    for other in rule.others:
        assert recipes.conflict({other, rule.step}) == f"{other} and {rule.step}: {rule.reason}"
        with pytest.raises(UsageError, match=re.escape(f"recipe cannot combine {other} and {rule.step}: {rule.reason}")):
            recipes.parse(f"{other},{rule.step}")
