"""`auto` without a tuned profile: the rules of each CPU class, on the canned machines (tests/fixtures/machines/),
with openvino and nncf present or not. Each expected recipe is the one auto_rules says measured fastest there."""

import dataclasses

import pytest

from machines import NAMES, machine
from sdcpu import recipes
from sdcpu.pipeline import optimizer
from sdcpu.recipes import auto, auto_rules
from sdcpu.system import hardware

LIBS = {"jemalloc": "/usr/lib/libjemalloc.so.2", "tcmalloc": "/usr/lib/libtcmalloc.so.4", "iomp": "/venv/lib/libiomp5.so"}
NUMACTL = frozenset({"numactl"})
AVX2_24G = dataclasses.replace(machine("epyc-2core-avx2"), memory_bytes=24 * 2**30)  # issue 13's EPYC


def recipes_of(cpu, **kwargs) -> tuple[str, str, str]:
    return tuple(str(auto.recipe(cpu, {}, quality=q, libs=LIBS, tools=NUMACTL, **kwargs)[0]) for q in auto.QUALITIES)


# One row per class at least (checked below): a change to one class's rules shows here as that class's row only.
WITH_OPENVINO = [
    (AVX2_24G, "openvino=f32", "openvino=f32", "openvino=f32,int8,tiny-vae"),
    (machine("kvm-xeon-avx512-noamx"), "openvino=f32", "openvino=f32", "openvino=f32,int8,tiny-vae"),
    (machine("epyc-zen4-2core-avx512bf16"), "openvino=f32", "openvino=bf16", "openvino=bf16,tiny-vae"),  # 8 GiB
    (machine("this-kvm-epyc-zen4-avx512bf16"), "openvino=f32", "openvino=bf16", "openvino=bf16,int8,tiny-vae"),
    (machine("this-kvm-xeon-amx"), "openvino=f32", "iomp,openvino=bf16", "iomp,openvino=bf16,int8,tiny-vae"),
    (machine("graviton3-aarch64"), "baseline", "bf16", "bf16,deepcache=2,tiny-vae"),
    (machine("graviton2-aarch64"), "baseline", "baseline", "deepcache=2,tiny-vae"),
    (machine("xeon-e5-2core-avx"), "baseline", "baseline", "deepcache=2,tiny-vae"),
]


@pytest.mark.parametrize("cpu, exact, high, fast", WITH_OPENVINO)
def test_each_class_takes_what_measured_fastest_there_with_openvino(installed, cpu, exact, high, fast):
    installed("openvino", "nncf")
    assert recipes_of(cpu) == (exact, high, fast)


def test_every_class_has_its_expected_recipes_above():
    assert {auto_rules.classify(row[0]) for row in WITH_OPENVINO} == set(auto_rules.CLASSES)


@pytest.mark.parametrize("cpu, exact, high, fast", [
    (AVX2_24G, "baseline", "baseline", "deepcache=2,tiny-vae"),
    (machine("kvm-xeon-avx512-noamx"), "baseline", "baseline", "deepcache=2,tiny-vae"),
    (machine("this-kvm-xeon-amx"), "baseline", "bf16", "bf16,deepcache=2,tiny-vae"),
])
def test_without_openvino_each_class_falls_back_to_torch(installed, cpu, exact, high, fast):
    installed()
    assert recipes_of(cpu) == (exact, high, fast)


def test_a_long_running_server_compiles_where_openvino_is_missing(installed):
    installed()
    assert recipes_of(AVX2_24G, long_running=True)[:2] == ("compile", "compile")
    recipe, reasons = auto.recipe(AVX2_24G, {}, quality="exact", libs=LIBS, tools=NUMACTL)
    assert str(recipe) == "baseline" and any("not compile: its one-time cost pays only" in r for r in reasons)
    installed("openvino")
    assert recipes_of(AVX2_24G, long_running=True)[0] == "openvino=f32"  # faster than compile, and no 4-minute wait


def test_a_long_running_server_on_zen4_compiles_torch_bf16_where_openvino_is_missing(installed):
    zen4 = machine("this-kvm-epyc-zen4-avx512bf16")
    installed()
    assert recipes_of(zen4, long_running=True) == ("compile", "bf16,compile", "bf16,deepcache=2,tiny-vae")
    assert recipes_of(zen4)[:2] == ("baseline", "bf16")  # a one-shot process never waits for the compile
    installed("openvino", "nncf")
    assert recipes_of(zen4, long_running=True) == recipes_of(zen4)  # OpenVINO bf16: as fast or faster, no compile


def test_int8_needs_nncf_and_the_memory_of_its_quantization(installed):
    installed("openvino", "nncf")
    recipe, reasons = auto.recipe(machine("epyc-2core-avx2"), {}, quality="fast", libs=LIBS, tools=NUMACTL)  # 8 GiB
    assert str(recipe) == "openvino=f32,tiny-vae"
    assert any(r.startswith("not openvino=f32,int8,tiny-vae: needs 11 GiB of memory, this machine has 8.0") for r in reasons)
    installed("openvino")
    recipe, reasons = auto.recipe(AVX2_24G, {}, quality="fast", libs=LIBS, tools=NUMACTL)
    assert str(recipe) == "openvino=f32,tiny-vae" and any("nncf not installed" in r for r in reasons)


def reduced_precision(recipe) -> bool:
    """The recipe computes in bf16: torch's bf16 step, or OpenVINO at bf16."""
    return bool(recipe.get("bf16")) or getattr(recipe.get("openvino"), "value", None) == "bf16"


@pytest.mark.parametrize("modules", [("openvino", "nncf"), ()])
@pytest.mark.parametrize("name", NAMES)
def test_bf16_at_high_and_fast_exactly_where_the_cpu_has_it_natively_never_at_exact(installed, name, modules):
    installed(*modules)
    cpu = machine(name)
    exact, high, fast = (auto.recipe(cpu, {}, quality=q, libs=LIBS, tools=NUMACTL)[0] for q in auto.QUALITIES)
    assert not reduced_precision(exact)
    assert reduced_precision(high) == reduced_precision(fast) == cpu.native_bf16


@pytest.mark.parametrize("name", NAMES)
def test_no_system_step_below_the_core_count_it_was_measured_on(installed, name):
    installed("openvino", "nncf")
    cpu = machine(name)
    for quality in auto.QUALITIES:
        recipe, reasons = auto.recipe(cpu, {}, quality=quality, libs=LIBS, tools=NUMACTL)
        system = {step.name for step in recipe.group("system")}
        if len(cpu.usable_physical_cores) < auto_rules.SYSTEM_MIN_CORES:
            assert system <= {"iomp"}  # AMX's measured iomp,openvino=bf16 only
            assert any(r.startswith("no allocator, Intel OpenMP or pinning") for r in reasons)
        else:  # the seed's 32 cores: its system rung, without the allocator OpenVINO aborts beside
            assert system == {"iomp", "pin"}
            assert f"no jemalloc: jemalloc and openvino: {recipes.PRELOADED_ALLOCATOR}" in reasons


def test_the_seeds_system_rung_on_32_cores_where_the_unet_runs_in_torch(installed):
    installed()
    recipe, _ = auto.recipe(machine("spr-2s-amx"), {}, quality="high", libs=LIBS, tools=NUMACTL)
    assert str(recipe) == "jemalloc,iomp,pin,bf16"


@pytest.mark.parametrize("name", NAMES)
def test_every_rule_reads_as_a_sentence_with_its_measurement(installed, name):
    installed("openvino", "nncf")
    _, reasons = auto.recipe(machine(name), {}, quality="high", libs=LIBS, tools=NUMACTL)
    klass = auto_rules.cpu_class(machine(name))
    assert reasons[0] == auto.NO_PROFILE and reasons[1] == f"CPU class {klass.name}: {klass.summary}"
    assert all("{" not in r and "}" not in r for r in reasons)  # every figure filled in


def test_info_names_the_class_of_the_machine_it_runs_on():
    from sdcpu.commands import info

    collected = info.collect()
    cpu = hardware.detect()
    assert f"CPU class {auto_rules.classify(cpu)}: " in "\n".join(collected["auto"]["reasons"])
    assert collected["auto"]["recipe"] == str(optimizer.resolve("auto", cpu))


def test_launch_auto_shows_the_system_steps_of_the_auto_recipe():
    cpu = hardware.detect()
    recipe, _ = auto.recipe(cpu)
    options, _ = auto.system_options(cpu)
    assert (options.allocator != "default") == bool(recipe.get("jemalloc") or recipe.get("tcmalloc"))
    assert (options.openmp == "iomp") == bool(recipe.get("iomp")) and options.pin == bool(recipe.get("pin"))
    assert "OMP_NUM_THREADS=" in auto.describe_plan(cpu, {})


def test_an_unknown_quality_is_refused():
    from sdcpu.errors import UsageError

    with pytest.raises(UsageError, match="unknown quality 'turbo'"):
        optimizer.resolve("auto:turbo", machine("spr-2s-amx"))


@pytest.mark.parametrize("name", sorted(auto_rules.CLASSES))
def test_every_class_ends_each_level_with_a_candidate_any_machine_can_take(name):
    klass = auto_rules.CLASSES[name]
    for level in auto.QUALITIES:
        last = (getattr(klass, level) or klass.exact)[-1]
        assert (last.needs, last.min_memory_gib, last.long_running) == ((), 0, False), (name, level)


def test_resolve_for_says_where_auto_came_from_and_what_it_took(installed):
    installed("openvino", "nncf")
    recipe, why = auto.resolve_for("auto:exact", machine("kvm-xeon-avx512-noamx"), "random:nothing-built", 64, 64)
    assert str(recipe) == "openvino=f32"
    assert why.startswith(auto.NO_PROFILE + "; exact: openvino=f32: OpenVINO f32: exact")
    assert auto.resolve_for("baseline", machine("kvm-xeon-avx512-noamx"), "random:tiny", 64, 64)[1] is None
