"""`auto` without a tuned profile: the rules of each CPU class, on the canned machines (tests/fixtures/machines/),
with openvino and nncf present or not. Each expected recipe is the one auto_rules says measured fastest there."""

import dataclasses

import pytest

from machines import NAMES, machine
from sdcpu import recipes
from sdcpu.pipeline import optimizer
from sdcpu.families import flux2, sd, sdxl
from sdcpu.recipes import auto, auto_rules, memory
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
    assert ("not openvino=f32,int8,tiny-vae: its first run (OpenVINO converts the fp32 model; int8 quantizes the UNet) "
            "needs about 11.0 GiB, more than 90% of this machine's 8.0 GiB") in reasons
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
        assert (last.needs, auto._unavailable(last, long_running=False)) == ((), None), (name, level)


def test_resolve_for_says_where_auto_came_from_and_what_it_took(installed):
    installed("openvino", "nncf")
    recipe, why = auto.resolve_for("auto:exact", machine("kvm-xeon-avx512-noamx"), "random:nothing-built", 64, 64)
    assert str(recipe) == "openvino=f32"
    assert why.startswith(auto.NO_PROFILE + "; exact: openvino=f32: OpenVINO f32: exact")
    assert auto.resolve_for("baseline", machine("kvm-xeon-avx512-noamx"), "random:tiny", 64, 64)[1] is None


# SDXL's weights are 3.2x SD 1.5's (sdcpu.recipes.memory): on a CPU server of 14 GiB, each level's first candidate
# for SD still fits, SDXL's OpenVINO conversion (its UNet's fp32 weights and graph: about 12.9 GiB) does not; on one
# of 16 GiB the conversion fits, and fp32 SDXL at 1024x1024 (16.8 GiB) only one part at a time (the release step).
ZEN4 = machine("this-kvm-epyc-zen4-avx512bf16")
ZEN4_16G = dataclasses.replace(ZEN4, memory_bytes=16 * 2**30)
ZEN4_14G = dataclasses.replace(ZEN4, memory_bytes=14 * 2**30)


def sdxl_job(side=1024):
    return memory.Job(sdxl.FAMILY, side, side)


@pytest.mark.parametrize("name", NAMES)
def test_the_rules_take_the_same_recipe_for_sd_at_its_size_as_with_no_model_known(installed, name):
    installed("openvino", "nncf")
    cpu = machine(name)
    assert recipes_of(cpu, job=memory.Job(sd.FAMILY, 512, 512)) == recipes_of(cpu)


def test_a_level_whose_recipe_does_not_fit_falls_back_with_the_reason(installed):
    installed("openvino", "nncf")
    assert recipes_of(ZEN4_14G, job=memory.Job(sd.FAMILY, 512, 512)) == recipes_of(ZEN4)  # SD fits 14 GiB
    exact, high, fast = recipes_of(ZEN4_14G, job=sdxl_job())
    assert (high, fast) == ("bf16", "bf16,deepcache=2,tiny-vae")  # torch loads and casts without converting
    recipe, reasons = auto.recipe(ZEN4_14G, {}, quality="high", libs=LIBS, tools=NUMACTL, job=sdxl_job())
    assert ("not openvino=bf16: its first run (OpenVINO converts the fp32 model) needs about 12.9 GiB, more than 90% "
            "of this machine's 14.0 GiB") in reasons
    assert recipes_of(ZEN4_16G, job=sdxl_job())[1:] == recipes_of(ZEN4, job=sdxl_job())[1:]  # bf16 SDXL fits 16 GiB
    assert recipes_of(ZEN4, job=sdxl_job()) == recipes_of(ZEN4)  # 23.5 GiB: SDXL takes SD's recipes


@pytest.mark.parametrize("cpu", [ZEN4_16G, dataclasses.replace(machine("epyc-2core-avx2"), memory_bytes=16 * 2**30)])
def test_a_recipe_that_fits_only_one_part_at_a_time_takes_the_release_step(installed, cpu):
    """fp32 SDXL at 1024x1024: 12.9 GiB of weights and the VAE's activations (16.8 GiB) > 90% of 16 GiB; its largest
    part, the UNet with its buffers, needs 11.3 GiB: openvino=f32 with release, after every recipe of the level as it
    is (release costs each image a compile per part); with room, none."""
    installed("openvino", "nncf")
    recipe, reasons = auto.recipe(cpu, {}, quality="exact", libs=LIBS, tools=NUMACTL, job=sdxl_job())
    assert str(recipe) == "openvino=f32,release"
    assert "not openvino=f32: needs about 16.8 GiB, more than 90% of this machine's 16.0 GiB" in reasons
    assert next(r for r in reasons if r.startswith("exact: ")).endswith(
        "with release: one part resident at a time, the only way it fits this machine's memory (a compile per part "
        "per image)")
    roomy = dataclasses.replace(cpu, memory_bytes=24 * 2**30)
    assert str(auto.recipe(roomy, {}, quality="exact", libs=LIBS, tools=NUMACTL, job=sdxl_job())[0]) == "openvino=f32"
    released = memory.need(sdxl.FAMILY, recipe, cpu, 1024, 1024)
    assert released.steady_gib == 11.3 and released.first_gib == 12.9


def test_where_nothing_at_a_level_fits_the_recipe_needing_least_is_taken_and_said(installed):
    installed("openvino", "nncf")
    small = dataclasses.replace(ZEN4, memory_bytes=8 * 2**30)
    recipe, reasons = auto.recipe(small, {}, quality="exact", libs=LIBS, tools=NUMACTL, job=sdxl_job())
    # fp32 SDXL at 1024x1024: eager and OpenVINO f32 need 16.8 GiB; one part at a time 11.3 GiB once converted, the
    # conversion 12.9 GiB (the UNet's fp32 weights and graph): all > 90% of 8 GiB; the last needs least
    assert str(recipe) == "openvino=f32,release"
    taken = next(r for r in reasons if r.startswith("exact: "))
    assert "none of this level's recipes fits this machine's memory for sdxl at 1024x1024" in taken
    assert "needs least (about 12.9 GiB" in taken


@pytest.mark.parametrize("cpu", [AVX2_24G, machine("kvm-xeon-avx512-noamx")])
def test_a_candidate_measured_slower_for_a_family_is_tried_after_the_others_for_it(installed, cpu):
    """SDXL's weight-only int8 measured slower than OpenVINO f32 on AVX2: its fast level takes int8 only where the
    faster recipe does not fit the memory; SD keeps its int8 (hybrid, measured faster)."""
    installed("openvino", "nncf")
    roomy, small = dataclasses.replace(cpu, memory_bytes=24 * 2**30), dataclasses.replace(cpu, memory_bytes=15 * 2**30)
    recipe, reasons = auto.recipe(roomy, {}, quality="fast", libs=LIBS, tools=NUMACTL, job=sdxl_job())
    assert str(recipe) == "openvino=f32,tiny-vae"
    assert any(r.startswith("openvino=f32,int8,tiny-vae tried last for sdxl: ") for r in reasons)
    assert recipes_of(small, job=sdxl_job())[2] == "openvino=f32,int8,tiny-vae"  # 14.4 GiB without int8 > 90% of 15
    assert recipes_of(roomy, job=memory.Job(sd.FAMILY, 512, 512))[2] == "openvino=f32,int8,tiny-vae"


@pytest.mark.parametrize("name", ["spr-2s-amx", "this-kvm-xeon-amx"])
def test_sdxl_on_amx_takes_openvino_bf16_without_its_weight_only_int8_at_fast(installed, name):
    """On AMX SDXL's weight-only int8 measured 0.90x OpenVINO bf16 with tiny-vae, for 0.44 GiB less: `fast` takes it
    only where the faster recipe does not fit; SD keeps its hybrid int8 (measured 1.30x there)."""
    installed("openvino", "nncf")
    cpu = machine(name)
    roomy = dataclasses.replace(cpu, memory_bytes=24 * 2**30)
    recipe, reasons = auto.recipe(roomy, {}, quality="fast", libs=LIBS, tools=NUMACTL, job=sdxl_job())
    assert recipe.get("tiny-vae") and recipe.get("openvino").value == "bf16" and not recipe.get("int8"), str(recipe)
    assert any(r.startswith("iomp,openvino=bf16,int8,tiny-vae tried last for sdxl: SDXL's int8") for r in reasons)
    sd_fast = auto.recipe(roomy, {}, quality="fast", libs=LIBS, tools=NUMACTL, job=memory.Job(sd.FAMILY, 512, 512))[0]
    assert sd_fast.get("int8") is not None
    # estimated as measured, within 0.4 GiB: 8.0 without int8 (8.38), 7.6 with it (7.51 and 7.94)
    need = {steps: memory.need(sdxl.FAMILY, recipes.parse(steps), cpu, 1024, 1024).steady_gib
            for steps in ("openvino=bf16,tiny-vae", "openvino=bf16,int8,tiny-vae")}
    assert list(need.values()) == [8.0, 7.6], need


@pytest.mark.parametrize("name", NAMES)
def test_fast_on_a_7_gib_server_takes_eager_int8_weights_and_taesd_for_sdxl(installed, name):
    """No OpenVINO recipe fits 7 GiB for SDXL at 1024 (its conversion alone needs 12.9 GiB): `fast` ends with the
    least-memory recipe, measured inside a 7 GiB cgroup; with room, the class's own fast recipe still comes first."""
    installed("openvino", "nncf")
    small = dataclasses.replace(machine(name), memory_bytes=7 * 2**30)
    recipe, reasons = auto.recipe(small, {}, quality="fast", libs=LIBS, tools=NUMACTL, job=sdxl_job())
    assert str(recipe).endswith("weights=int8,tiny-vae"), (name, str(recipe))
    assert any(r.startswith("fast: weights=int8,tiny-vae: int8 weights computed in float32") for r in reasons)
    assert memory.need(sdxl.FAMILY, recipe, small, 1024, 1024).peak_gib < 7 * 0.9
    roomy = dataclasses.replace(machine(name), memory_bytes=64 * 2**30)
    assert "weights" not in str(auto.recipe(roomy, {}, quality="fast", libs=LIBS, tools=NUMACTL, job=sdxl_job())[0])


def test_the_memory_estimate_follows_each_steps_weights():
    sdxl_512 = [memory.need(sdxl.FAMILY, recipes.parse(steps), ZEN4, 512, 512)
                for steps in ("", "openvino=bf16", "openvino=bf16,tiny-vae", "openvino=bf16,int8", "bf16,compile")]
    baseline, ov_bf16, tiny, int8, compiled = sdxl_512
    assert baseline.first_gib == baseline.steady_gib and not baseline.first_what  # nothing converted
    assert ov_bf16.steady_gib < baseline.steady_gib / 1.8  # 2 bytes a weight, not 4
    # the conversion holds the UNet's fp32 weights and graph: more than bf16 needs after, less than all fp32 weights
    assert ov_bf16.steady_gib < ov_bf16.first_gib < baseline.steady_gib
    assert tiny.steady_gib < ov_bf16.steady_gib and int8.steady_gib < ov_bf16.steady_gib
    assert compiled.steady_gib > ov_bf16.steady_gib  # the eager weights beside inductor's
    no_bf16 = machine("epyc-2core-avx2")  # OpenVINO bf16 falls back to f32 kernels and weights there
    assert memory.need(sdxl.FAMILY, recipes.parse("openvino=bf16"), no_bf16, 512, 512).steady_gib == baseline.steady_gib
    assert memory.need(sdxl.FAMILY, recipes.parse(""), ZEN4, 1024, 1024).steady_gib > baseline.steady_gib  # pixels


def test_resolve_for_reads_the_family_of_the_model_before_it_loads(installed):
    installed("openvino", "nncf")
    recipe, why = auto.resolve_for("auto", ZEN4_14G, "random:sdxl", 1024, 1024)
    assert str(recipe) == "bf16" and "high: bf16: " in why and "not openvino=bf16: its first run" in why
    assert str(auto.resolve_for("auto", ZEN4_14G, "random:sd15", 512, 512)[0]) == "openvino=bf16"


@pytest.mark.parametrize("name", NAMES)
def test_flux2_takes_its_own_recipes_first_and_rounds_its_weights_only_where_nothing_else_fits(installed, name):
    """FLUX.2 refuses int8, DeepCache and TAESD (Family.refuses): every level on every class takes the family's own
    recipe: its bf16 weights (computed in bf16 where the CPU has it, in float32 where bf16 is emulated), with `release`
    where the machine's memory is too small for every part at once; rounded weights (int8 from `high`, int4 at `fast`)
    only where nothing less rounded fits: on eager torch where bf16 is emulated; where it is native on OpenVINO bf16
    (4x eager torch's float32 compute of them), eager int4 last, where OpenVINO's one-time conversion does not fit
    (7 GiB). A long-running server compiles the bf16 model where bf16 is native, at `high` and `fast`."""
    installed("openvino", "nncf")
    job = memory.Job(flux2.FAMILY, 512, 512)
    for gib in (24, 12, 7):
        cpu = dataclasses.replace(machine(name), memory_bytes=gib * 2**30)
        own = "" if cpu.native_bf16 else "weights=bf16"
        released = ",".join(filter(None, (own, "release")))
        expected = {24: {"exact": own, "high": own, "fast": own},
                    12: {"exact": released, "high": released, "fast": released},
                    7: {"exact": released, "high": released if cpu.native_bf16 else "weights=int8",
                        "fast": "weights=int4"}}[gib]
        for quality in auto.QUALITIES:
            recipe, reasons = auto.recipe(cpu, {}, quality=quality, libs=LIBS, tools=NUMACTL, job=job)
            framework = ",".join(str(step) for step in recipe.steps if step.name in ("openvino", "weights", "release"))
            assert framework == expected[quality], (name, gib, quality)
            assert not {step.name for step in recipe.steps} & set(flux2.FAMILY.refusals(cpu.native_bf16))
            if gib == 7 and quality != "fast":  # nothing fits 90% of 7 GiB: the least needing, said so
                assert "none of this level's recipes fits this machine's memory" in "\n".join(reasons)
            served = auto.recipe(cpu, {}, quality=quality, libs=LIBS, tools=NUMACTL, job=job, long_running=True)[0]
            compiles = gib == 24 and cpu.native_bf16 and quality != "exact"  # 20.3 GiB estimated, 19.10 measured
            assert (served.get("compile") is not None) is compiles, (name, gib, quality, str(served))
    exact = auto.recipe(AVX2_24G, {}, quality="exact", libs=LIBS, tools=NUMACTL, job=job)
    assert "exact: weights=bf16: FLUX.2's bf16 weights computed in float32" in "\n".join(exact[1])
    # released: the transformer's 3.9B bf16 weights alone beside the runtime, not the 3.1B encoder's too
    assert 8 < memory.need(flux2.FAMILY, recipes.parse("weights=bf16,release"), AVX2_24G, 512, 512).steady_gib < 10
    # int8: a byte a weight, every part at once; int4 about 0.6 (measured at 512: 8.83 and 6.37 GiB)
    assert 7 < memory.need(flux2.FAMILY, recipes.parse("weights=int8"), AVX2_24G, 512, 512).steady_gib < 9
    assert 4.5 < memory.need(flux2.FAMILY, recipes.parse("weights=int4"), AVX2_24G, 512, 512).steady_gib < 7
    assert 14 < memory.need(flux2.FAMILY, recipes.parse(""), AVX2_24G, 512, 512).steady_gib < 16
    # NNCF-compressed IR weights, int4 fitted on its measured 6.31 GiB; the bf16 conversion ~10 (it ran in 12 GiB)
    ov_int4 = memory.need(flux2.FAMILY, recipes.parse("openvino,weights=int4"), AVX2_24G, 512, 512)
    assert 5.8 < ov_int4.steady_gib < 7 and 9 < ov_int4.first_gib < 11 and "NNCF compresses" in ov_int4.first_what


@pytest.mark.parametrize("name", NAMES)
def test_a_job_with_a_controlnet_takes_a_recipe_that_keeps_the_eager_unet(installed, name):
    installed("openvino", "nncf")
    cpu = machine(name)
    for quality in auto.QUALITIES:
        chosen, reasons = auto.choose(cpu, quality, job=memory.Job(sd.FAMILY, 512, 512, control=True))
        assert all(recipes.kind(step.name).control for step in chosen.steps), (quality, str(chosen))
        plain = auto.choose(cpu, quality, job=memory.Job(sd.FAMILY, 512, 512))[0]
        if not all(recipes.kind(step.name).control for step in plain.steps):  # said why it was passed over
            assert any("a ControlNet adds its residuals to the UNet" in reason for reason in reasons), reasons
