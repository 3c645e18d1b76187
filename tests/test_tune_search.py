"""The tune search, its noise rule and budget, and the space it searches: pure, driven by fake measurements."""

import dataclasses

import pytest

from machines import machine
from sdcpu import recipes
from sdcpu.tune import search, space
from sdcpu.tune.search import Result

SPACE = space.Space((
    space.Dimension("precision", ("fp32", "bf16")),
    space.Dimension("backend", ("eager", "compile", "openvino")),
    space.Dimension("threads", ("2",)),
    space.Dimension("allocator", ("default", "jemalloc")),
    space.Dimension("pin", ("off", "on")),
))
LIBS = {"jemalloc": "/lib/libjemalloc.so.2", "tcmalloc": "/lib/libtcmalloc_minimal.so.4", "iomp": "/lib/libiomp5.so"}


def fake(times: dict, spread: float = 0.0, wall: float = 10.0, failing=()):
    """A measuring function: seconds per image by the steps a configuration adds (multiplied), +- SPREAD/2."""
    calls = []

    def measure(config):
        calls.append(config)
        recipe = SPACE.recipe(config)
        if any(step in recipe for step in failing):
            return Result(config, wall_s=wall, status="failed: double free or corruption (exit -6)")
        median = 10.0
        for step, factor in times.items():
            median *= factor if step in recipe.split(",") else 1
        samples = (median * (1 - spread / 2), median, median * (1 + spread / 2))
        return Result(config, samples, first_call_s=1.0, wall_s=wall, detail={"unet_median_s": median / 20})

    return measure, calls


def run(measure, budget=10_000, estimate=lambda config: 10.0):
    return search.coordinate_descent(SPACE, measure, budget, estimate)


def test_noise_rule_needs_every_repeat_faster_and_the_floor():
    base = Result((), (9.0, 10.0, 11.0))
    assert not search.better(Result((), (9.2, 9.2, 9.2)), base)  # 8% faster, inside the baseline's range
    assert not search.better(Result((), (7.0, 7.5, 9.5)), base)  # 25% faster median, but one repeat overlaps
    assert search.better(Result((), (8.5, 8.5, 8.5)), base)  # 15% faster, beyond every baseline repeat
    assert search.better(Result((), (4.0, 5.0, 8.0)), base)  # a 60% spread does not hide a gap no repeat came near
    quiet = Result((), (10.0, 10.0))
    assert not search.better(Result((), (9.6, 9.6)), quiet)  # 4%: below the 5% floor
    assert search.better(Result((), (9.4, 9.4)), quiet)
    assert not search.better(Result((), status="failed: x"), quiet) and search.better(quiet, Result(()))


def test_descent_keeps_a_clear_gain_and_builds_on_it_one_dimension_at_a_time():
    measure, calls = fake({"bf16": 0.5, "openvino=bf16": 0.3, "pin": 0.9})  # openvino (bf16 inside) 3 s, bf16 5 s
    found = run(measure)
    assert SPACE.recipe(found.best.config) == "pin,openvino=bf16"
    assert calls[0] == SPACE.default and len(calls) == len(set(calls)) == 5  # never a grid (12 combinations)
    tried = [SPACE.recipe(r.config) for r in found.results]
    assert tried[:4] == ["baseline", "bf16", "bf16,compile", "openvino=bf16"]  # backends tried on top of bf16


def test_a_tie_keeps_the_simpler_configuration():
    measure, _ = fake({"bf16": 0.97, "jemalloc": 1.0, "pin": 0.98})
    assert run(measure).best.config == SPACE.default


def test_noise_hides_a_gain_it_is_no_larger_than():
    measure, _ = fake({"bf16": 0.85}, spread=0.3)
    assert run(measure).best.config == SPACE.default
    measure, _ = fake({"bf16": 0.6}, spread=0.3)
    assert SPACE.recipe(run(measure).best.config) == "bf16"


def test_a_failing_configuration_is_recorded_and_never_chosen():
    measure, _ = fake({"openvino=f32": 0.1, "compile": 0.8}, failing=("openvino",))
    found = run(measure)
    assert SPACE.recipe(found.best.config) == "compile"
    failed = [r for r in found.results if r.status.startswith("failed")]
    assert [SPACE.recipe(r.config) for r in failed] == ["openvino=f32"]


def test_openvino_beside_an_allocator_is_skipped_with_the_reason_not_run():
    measure, calls = fake({"openvino=f32": 0.5})
    found = run(measure)
    skipped = [r for r in found.results if r.status.startswith("skipped")]
    assert [SPACE.recipe(r.config) for r in skipped] == ["jemalloc,openvino=f32"]
    assert skipped[0].status == f"skipped: jemalloc and openvino: {recipes.PRELOADED_ALLOCATOR}"
    assert skipped[0].config not in calls


def test_budget_exhaustion_skips_what_does_not_fit_with_the_confirmation_kept_in_reserve():
    measure, calls = fake({"bf16": 0.5})
    found = run(measure, budget=65, estimate=lambda config: 100.0 if "compile" in SPACE.recipe(config) else 10.0)
    # baseline 10 s + bf16 10 s + reserve 2 x (10 + 10) = 60 <= 65; then nothing else fits
    assert [SPACE.recipe(c) for c in calls] == ["baseline", "bf16"]
    budget = [r for r in found.results if r.status.startswith("skipped: budget")]
    assert {SPACE.recipe(r.config) for r in budget} == {"bf16,compile", "openvino=bf16", "jemalloc,bf16", "pin,bf16"}
    assert SPACE.recipe(found.best.config) == "bf16"


def test_a_failing_default_stops_the_search():
    measure, calls = fake({}, failing=("baseline",))
    found = run(measure)
    assert len(calls) == 1 and found.notes and not found.best.ok


def test_confirmation_interleaves_and_rejects_a_winner_that_was_luck():
    order, luck = [], iter([10.0, 8.0, 10.0, 10.5])  # A B A B: the winner's edge does not repeat

    def measure(config):
        order.append(config)
        value = next(luck)
        return Result(config, (value, value), wall_s=1.0)

    winner = SPACE.with_option(SPACE.default, "precision", "bf16")
    confirmed, base, best, runs = search.confirm(SPACE.default, winner, measure)
    assert order == [SPACE.default, winner, SPACE.default, winner] and len(runs) == 4
    assert base.samples == (10.0, 10.0) and best.samples == (8.0, 10.5) and not confirmed
    steady = iter([10.0, 7.0, 10.2, 7.1])
    assert search.confirm(SPACE.default, winner, lambda c: Result(c, (v := next(steady), v)))[0]


def test_fit_protocol_cuts_repeats_then_size_and_says_so():
    base = Result((), (1.0, 1.0, 1.0), wall_s=100.0, detail={"compute_s": 90.0, "unet_median_s": 20.0})
    assert search.fit_protocol(10_000, 10, base, 3, (512, 512)) == (3, (512, 512), [])
    repeats, size, notes = search.fit_protocol(900, 10, base, 3, (512, 512))  # 10 x (10 + 70) = 800
    assert (repeats, size) == (2, (512, 512)) and "repeats reduced from 3 to 2" in notes[0]
    repeats, size, notes = search.fit_protocol(300, 10, base, 3, (512, 512))  # half side: 10 x (10 + 70/4)
    assert (repeats, size) == (2, (256, 256)) and "size reduced from 512x512 to 256x256" in notes[1]
    repeats, size, notes = search.fit_protocol(50, 10, base, 3, (64, 64))  # nothing smaller than 128: said
    assert size == (64, 64) and "do not fit" in notes[-1]


def test_space_offers_only_what_the_machine_has():
    spr, epyc = machine("spr-2s-amx"), machine("epyc-2core-avx2")
    full = space.build(spr, LIBS, {"numactl"}, {"openvino"}, "high")
    names = {d.name: d.options for d in full.dimensions}
    assert names["precision"] == ("fp32", "bf16") and names["backend"] == ("eager", "compile", "openvino")
    assert names["allocator"] == ("default", "tcmalloc", "jemalloc", "jemalloc=default")
    assert names["openmp"] == ("gomp", "iomp") and names["pin"] == ("off", "on")
    assert names["threads"] == ("32", "64", "24", "16")  # physical, logical, then fewer on a big machine
    bare = {d.name: d.options for d in space.build(epyc, {}, frozenset(), set(), "high").dimensions}
    assert bare["precision"] == ("fp32",) and bare["allocator"] == ("default",) and bare["pin"] == ("off",)
    assert bare["threads"] == ("2",) and bare["backend"] == ("eager", "compile")
    exact = {d.name: d.options for d in space.build(spr, LIBS, {"numactl"}, set(), "exact").dimensions}
    assert exact["precision"] == ("fp32",)  # quality exact never measures bf16


def test_configurations_are_recipes():
    full = space.build(machine("spr-2s-amx"), LIBS, {"numactl"}, {"openvino"}, "high")
    config = full.default
    assert full.recipe(config) == "baseline"
    for name, option in (("allocator", "jemalloc=default"), ("openmp", "iomp"), ("threads", "16"), ("pin", "on"),
                         ("layout", "channels_last"), ("precision", "bf16"), ("backend", "compile")):
        config = full.with_option(config, name, option)
    assert full.recipe(config) == "jemalloc=default,iomp,threads=16,pin,channels_last,bf16,compile"
    from sdcpu import recipes

    recipes.parse(full.recipe(config))  # a valid recipe
    assert full.recipe(full.with_option(config, "backend", "openvino")).endswith("channels_last,openvino=bf16")


def test_result_median_and_spread():
    r = Result((), (2.0, 1.0, 4.0))
    assert r.median == 2.0 and r.spread == pytest.approx(1.5)
    assert dataclasses.replace(r, status="measured (confirmation)").ok
