"""The fbcache step (sdcpu.algorithms.fbcache) on random:tiny-flux2: a threshold no change is below runs every block
(the exact image), one every change is below runs the blocks on an image's first call only and starts each image
afresh, classifier-free guidance's two calls keep a cache each, and where it cannot apply it says why."""

import copy

import pytest

from sdcpu import load_pipeline, optimize
from sdcpu.algorithms import fbcache
from sdcpu.bench import report
from sdcpu.cli import main
from sdcpu.pipeline import generate

REQUEST = generate.Request("a red cat", steps=4, width=64, height=64, seed=3, guidance=1.0)
OTHER = generate.Request("a blue dog", steps=4, width=64, height=64, seed=4, guidance=1.0)
# A threshold above every relative change of the first block's residual between calls (random weights: 1.2-1.8 on the
# tiny model at 64x64, 3-4 steps, with and without guidance), and one below all of them.
ALWAYS, NEVER = "100", "1e-9"


@pytest.fixture(scope="module")
def pristine(sdcpu_home):
    return load_pipeline("random:tiny-flux2")


def cached(pipe, threshold, before=""):
    pipe, outcomes = optimize(pipe, f"{before}fbcache={threshold}")
    assert all(o.applied for o in outcomes), outcomes
    return pipe


def image(pipe, request=REQUEST):
    return generate.run(pipe, request).images[0]


@pytest.mark.parametrize("before", ["", "weights=bf16,release,"])
def test_a_threshold_no_change_is_below_runs_every_block_and_gives_the_exact_image(pristine, before):
    exact = image(optimize(copy.deepcopy(pristine), before.rstrip(","))[0] if before else pristine)
    pipe = cached(copy.deepcopy(pristine), NEVER, before)
    # the hooks only route the blocks' outputs; every block ran, in the same process and batch: the same bytes
    assert image(pipe).tobytes() == exact.tobytes()
    assert (fbcache.tally(pipe).calls, fbcache.tally(pipe).full) == (4, 4)


def test_a_threshold_every_change_is_below_skips_the_blocks_after_each_images_first_call(pristine):
    exact = image(pristine)
    pipe = cached(copy.deepcopy(pristine), ALWAYS)
    first = image(pipe)
    assert (fbcache.tally(pipe).calls, fbcache.tally(pipe).full) == (4, 1)
    assert first.tobytes() != exact.tobytes()  # three calls added the first call's residual
    # a new image starts with a full call: a cache left from the last image would change the second one
    assert image(pipe).tobytes() == first.tobytes()
    assert fbcache.tally(pipe).full == 1
    image(pipe, OTHER)
    assert fbcache.tally(pipe).full == 1


def test_an_image_that_failed_leaves_no_cache_for_the_next(pristine):
    """diffusers clears its cache only when a call finishes; sdcpu clears it when the next image starts."""
    pipe = cached(copy.deepcopy(pristine), ALWAYS)
    first = image(pipe)

    def fail(index, *_):
        if index == 1:
            raise RuntimeError("a failure after two steps")

    with pytest.raises(RuntimeError):  # another prompt and seed: their residuals are not the first image's
        generate.run_batch(pipe, [OTHER], on_step=fail)
    assert image(pipe).tobytes() == first.tobytes()


def test_guidance_keeps_a_cache_for_each_of_its_two_calls(pristine):
    pipe = copy.deepcopy(pristine)
    pipe.register_to_config(is_distilled=False)  # klein base: classifier-free guidance, two calls a step
    request = generate.Request("a red cat", steps=3, width=64, height=64, seed=3, guidance=4.0)
    exact = image(pipe, request)
    never = cached(copy.deepcopy(pipe), NEVER)
    assert image(never, request).tobytes() == exact.tobytes()
    assert fbcache.tally(never).calls == 6
    always = cached(copy.deepcopy(pipe), ALWAYS)
    image(always, request)
    # the conditional and the unconditional call each run in full once: neither reuses the other's residual
    assert (fbcache.tally(always).calls, fbcache.tally(always).full) == (6, 2)


def test_where_it_cannot_apply_it_says_why(tiny, pristine):
    _, outcomes = optimize(tiny(), "fbcache")
    assert not outcomes[0].applied and "a UNet's step cache is deepcache" in outcomes[0].detail
    assert fbcache.tally(tiny()) is None
    # a backend after it would trace the hooks' first path (every block) or reuse the plain IR: skipped, not converted
    pipe, outcomes = optimize(copy.deepcopy(pristine), "fbcache,openvino")
    assert outcomes[0].applied and not outcomes[1].applied
    assert "fbcache patched the eager transformer before it" in outcomes[1].detail
    assert fbcache.tally(pipe) is not None


@pytest.mark.parametrize("value", ["0", "-1", "inf", "x"])
def test_a_threshold_not_above_0_is_a_usage_error(value, tmp_path, capsys):
    assert main(["generate", "a cat", "--model", "random:tiny-flux2", "--recipe", f"fbcache={value}",
                 "-o", str(tmp_path / "x.png")]) == 2
    assert f"fbcache={value}" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_the_bench_row_says_how_many_calls_ran_every_block():
    row = {"steps": [{"step": "weights=bf16", "applied": True}, {"step": "fbcache=0.08", "applied": True}],
           "split": {"unet_calls": 4}, "denoiser_full_calls": 2, "unet_gflop_s": None}
    said = report.notes(row)
    assert "denoiser GFLOP/s not given: under fbcache=0.08 some calls run part of the network" in said
    assert "fbcache=0.08: every block ran on 2 of the last image's 4 denoiser calls, the first block alone on the " \
           "others" in said
    row |= {"denoiser_full_calls": 4, "unet_gflop_s": 140.0}  # nothing skipped: every call full, a rate to give
    assert not any("GFLOP/s" in note for note in report.notes(row))
    row["steps"][1]["applied"] = False
    row["steps"][1]["detail"] = "no"
    del row["denoiser_full_calls"]
    assert not any("GFLOP/s" in note for note in report.notes(row))


def test_a_pipeline_with_fbcache_is_freed_when_dropped(pristine):
    """A server that swaps models drops each pipeline; fbcache's state must not keep one alive."""
    import gc
    import weakref

    pipe = cached(copy.deepcopy(pristine), ALWAYS)
    image(pipe)
    gone = weakref.ref(pipe), weakref.ref(pipe.transformer)
    del pipe
    gc.collect()  # diffusers' hook registries and their modules refer to each other: a cycle for the collector
    assert all(ref() is None for ref in gone)


def test_a_bench_row_counts_the_calls_that_ran_every_block(tmp_path, sdcpu_home):
    """The bench's child reads the tally after its timed calls: the row says how many ran every block, and gives no
    FLOP rate where some did not."""
    from sdcpu.bench import ladders, runner

    protocol = ladders.Protocol(model="random:tiny-flux2", width=64, height=64, steps=3, runs=1, warmup_steps=1,
                                guidance=1.0).validate()
    rungs = (ladders.Rung("baseline", "baseline"), ladders.Rung("skipping", f"fbcache={ALWAYS}"))
    plain, skipping = runner.run(protocol, rungs, tmp_path / "bench")
    assert plain["denoiser_full_calls"] is None and plain["unet_gflop_s"] > 0
    assert skipping["split"]["unet_calls"] == 3 and skipping["denoiser_full_calls"] == 1
    assert skipping["unet_gflop_s"] is None
    # two of three calls added the first call's residual: another image (49.9 dB measured; rounding alone between
    # processes of one machine leaves the 8-bit image identical or within a level, well above 60 dB)
    assert skipping["fidelity"]["psnr_db"] < 60


def test_serve_and_batch_refuse_to_batch_requests_under_it_before_loading(tmp_path, capsys):
    """fbcache decides from a call's whole batch: two requests in one call would change each other's images."""
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("a red cat\na blue dog\n")
    out = tmp_path / "out"
    assert main(["batch", str(jobs), "--out", str(out), "--model", "random:tiny-flux2", "--recipe", "fbcache=0.2",
                 "--max-batch", "2"]) == 2
    assert "--max-batch 2 with fbcache=0.2: it decides what to skip from a call's whole batch" in \
        capsys.readouterr().err
    assert not out.exists()  # refused before batch.json is written
    assert main(["serve", "--recipe", "fbcache", "--model", "random:tiny-flux2", "--max-batch", "2"]) == 2
    assert "--max-batch 2 with fbcache: it decides" in capsys.readouterr().err


def test_generate_says_how_many_calls_ran_every_block(tmp_path, capsys):
    assert main(["generate", "a cat", "--model", "random:tiny-flux2", "--size", "64x64", "--recipe",
                 f"fbcache={ALWAYS}", "-o", str(tmp_path / "cat.png")]) == 0
    assert "fbcache: every block ran on 1 of the last image's 4 denoiser calls" in capsys.readouterr().out
