"""Each framework/algorithm step on random:tiny: it applies or says why not, and quality-preserving steps stay close
to eager fp32 for the same seed. Bounds (images in [0, 1]): fp32 layout/compile changes measured ~2e-6 max abs, bound
1e-4; bf16 measured ~1.7e-2 (8-bit mantissa through 3 steps and the VAE), bound 5e-2 (about 13 of 255 levels)."""


import numpy as np
import pytest
import torch

from sdcpu import load_pipeline, models, optimize, recipes
from sdcpu.models import state
from sdcpu.pipeline import optimizer, prepare
from machines import machine, NAMES

SPR = machine("spr-2s-amx")  # native bf16 (AMX)
EPYC = machine("epyc-2core-avx2")  # no native bf16


def image(pipe, size=(64, 64)):
    return pipe("a boat", num_inference_steps=3, height=size[0], width=size[1], output_type="np",
                generator=torch.Generator().manual_seed(0)).images


@pytest.fixture(scope="module")
def reference(tiny):
    return image(tiny())


def optimized(pipe, recipe, cpu=SPR):
    pipe, outcomes = optimize(pipe, recipe, cpu)
    return pipe, {o.step: o for o in outcomes}


def test_channels_last_is_exact_enough(reference, tiny):
    pipe, outcomes = optimized(tiny(), "channels_last")
    assert outcomes["channels_last"].applied
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert np.abs(image(pipe) - reference).max() < 1e-4


def test_bf16_applies_only_where_native_unless_forced(reference, tiny):
    pipe, outcomes = optimized(tiny(), "bf16", EPYC)
    assert not outcomes["bf16"].applied and "no native bf16" in outcomes["bf16"].detail
    assert pipe.unet.dtype == torch.float32
    pipe, outcomes = optimized(tiny(), "bf16!", EPYC)
    assert outcomes["bf16!"].applied and "FORCED" in outcomes["bf16!"].detail
    pipe, outcomes = optimized(tiny(), "bf16", SPR)
    assert outcomes["bf16"].applied and pipe.unet.dtype == torch.bfloat16
    assert np.abs(image(pipe) - reference).max() < 5e-2


def test_compile_wraps_unet_and_decoder_and_the_compiled_decoder_is_exact_and_cached_in_sdcpu_home(sdcpu_home, tiny):
    """The step as it runs, on the VAE decoder alone (its compile: ~30 s on 2 cores); the whole image, UNet included,
    is the slow test below."""
    eager = tiny()
    pipe, outcomes = optimized(tiny(), "channels_last,compile")
    assert outcomes["compile"].applied and isinstance(pipe.unet, torch._dynamo.eval_frame.OptimizedModule)
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        compiled, plain = pipe.vae.decode(latents).sample, eager.vae.decode(latents).sample
    assert np.abs((compiled - plain).numpy()).max() < 2e-4  # [-1, 1] output: the 1e-4 bound on [0, 1] pixels
    assert any((sdcpu_home / "inductor").iterdir())  # not torch's /tmp default: a second process finds it


@pytest.mark.slow  # inductor compiles the tiny UNet: ~70 s on 2 cores, a quarter of the fast suite's budget
def test_compile_fp32_matches_eager_and_caches_in_sdcpu_home(reference, sdcpu_home, tiny):
    pipe, outcomes = optimized(tiny(), "channels_last,compile")
    assert outcomes["compile"].applied
    assert np.abs(image(pipe) - reference).max() < 1e-4
    assert any((sdcpu_home / "inductor").iterdir())  # not torch's /tmp default: a second process finds it


def test_ipex_is_skipped_with_a_reason_when_absent(tiny):
    _, outcomes = optimized(tiny(), "ipex")
    assert not outcomes["ipex"].applied and "intel_extension_for_pytorch" in outcomes["ipex"].detail


def test_algorithm_steps_set_scheduler_and_call_defaults(tiny):
    pipe, outcomes = optimized(tiny(), "scheduler=dpm++,steps=6,guidance=1.0")
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert state.of(pipe).defaults == {"num_inference_steps": 6, "guidance_scale": 1.0}
    assert "no CFG batch" in outcomes["guidance=1.0"].detail
    assert str(state.of(pipe).recipe) == "scheduler=dpm++,steps=6,guidance=1.0"


def test_system_steps_are_left_to_the_launcher(tiny):
    _, outcomes = optimized(tiny(), "jemalloc,pin,channels_last")
    assert list(outcomes) == ["channels_last"]


def test_every_runtime_step_kind_has_a_function():
    from sdcpu.recipes import STEP_KINDS

    runtime = {name for name, kind in STEP_KINDS.items() if kind.group != "system"}
    assert runtime == set(optimizer.REGISTRY)


def test_a_swapped_scheduler_is_made_from_the_pipelines_own_never_from_another_swapped_one(tiny):
    """dpm++ made from dpm++-karras's config would keep its Karras sigmas (from_config carries every option over)."""
    from sdcpu.models import schedulers

    pipe = tiny()
    own, swap = pipe.scheduler, schedulers.Swapper(pipe)
    assert swap.use("dpm++-karras") == "dpm++-karras" and pipe.scheduler.config.use_karras_sigmas
    assert swap.use("dpm++") == "dpm++" and not pipe.scheduler.config.get("use_karras_sigmas")
    assert swap.use(None) == schedulers.current_name(pipe) and pipe.scheduler is own
    pipe.scheduler = own
    schedulers.set_scheduler(pipe, "dpm++-karras")
    schedulers.set_scheduler(pipe, "dpm++")  # what batch did: from the last swapped one's config
    assert schedulers.current_name(pipe) == "dpm++-karras"


@pytest.mark.parametrize("name", NAMES)
def test_a_model_is_loaded_in_bf16_exactly_where_the_bf16_step_will_apply(name):
    cpu = machine(name)
    bf16 = torch.bfloat16 if cpu.native_bf16 else None  # None: the family's dtype
    assert optimizer.load_dtype(recipes.parse("bf16,tiny-vae"), cpu) is bf16
    assert optimizer.load_dtype(recipes.parse("bf16!"), cpu) is torch.bfloat16  # forced
    for other in ("baseline", "openvino=bf16", "compile"):  # OpenVINO's bf16 is its precision hint: it traces fp32
        assert optimizer.load_dtype(recipes.parse(other), cpu) is None  # the family's


def test_weights_loaded_in_bf16_are_those_cast_after_loading_and_the_bf16_step_keeps_them(sdcpu_home, tiny):
    cast = tiny().to(dtype=torch.bfloat16)
    loaded = load_pipeline("random:tiny", dtype=torch.bfloat16)  # each weight cast as it is read
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(loaded, name).state_dict(), getattr(cast, name).state_dict()
        assert all(ours[key].dtype == torch.bfloat16 and torch.equal(ours[key], theirs[key]) for key in theirs), name
    seen = []
    prepared = prepare.prepare(models.parse_spec("random:tiny"), recipes.parse("bf16!"), machine("epyc-2core-avx2"),
                               loaded=lambda pipe: seen.append(pipe.unet.dtype))
    assert seen == [torch.bfloat16] and prepared.pipe.unet.dtype == torch.bfloat16

