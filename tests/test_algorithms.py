"""The work-cutting steps on random:tiny: deepcache, tome and tiny-vae apply or say why not, give finite images of the right
shape, are reproducible for a seed, and deepcache=1 is the exact UNet."""

import numpy as np
import pytest
import torch

from sdcpu import optimize
from sdcpu.models import state


def image(pipe, steps=6):
    return pipe("a boat", num_inference_steps=steps, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


@pytest.fixture(scope="module")
def optimized(tiny):
    """optimized(recipe): a fresh random:tiny under DDIM and RECIPE, and each step's outcome by the step's name."""

    def made(recipe):
        pipe, outcomes = optimize(tiny(), f"scheduler=ddim,{recipe}")
        return pipe, {o.step.split("=")[0]: o for o in outcomes}
    return made


@pytest.fixture(scope="module")
def reference(optimized):
    pipe, _ = optimized("steps=6")
    return image(pipe)


def full_calls(pipe):
    """Counts the UNet's full calls: only those run its first up block."""
    calls = []
    pipe.unet.up_blocks[0].register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_deepcache_1_is_the_exact_unet(optimized, reference):
    pipe, outcomes = optimized("deepcache=1")
    assert outcomes["deepcache"].applied and "exact" in outcomes["deepcache"].detail
    assert np.array_equal(image(pipe), reference)


def test_deepcache_runs_the_full_unet_every_n_calls_and_restarts_per_image(optimized, reference):
    pipe, outcomes = optimized("deepcache=3")
    assert outcomes["deepcache"].applied
    calls = full_calls(pipe)
    first = image(pipe)
    assert len(calls) == 2  # DDIM, 6 steps: calls 0 and 3 are full, the other 4 shallow
    second = image(pipe)
    assert len(calls) == 4 and np.array_equal(first, second)  # a new image starts with a full call
    assert first.shape == reference.shape and np.isfinite(first).all()
    assert not np.array_equal(first, reference)  # the shallow calls ran on cached features


def test_deepcache_after_a_backend_is_skipped_with_the_reason(optimized):
    _, outcomes = optimized("compile,deepcache=2")
    assert not outcomes["deepcache"].applied and "deepcache runs without one" in outcomes["deepcache"].detail


def test_deepcache_refuses_unet_inputs_it_would_drop(optimized):
    pipe, _ = optimized("deepcache=2")
    with pytest.raises(NotImplementedError, match="timestep_cond"):
        pipe.unet(torch.randn(2, 4, 8, 8), 10, torch.randn(2, 77, 32), timestep_cond=torch.zeros(2, 32))


def test_tiny_vae_on_a_random_model_is_a_random_taesd_built_offline(optimized, reference):
    from diffusers import AutoencoderTiny

    pipe, outcomes = optimized("tiny-vae")
    assert outcomes["tiny-vae"].applied and "random weights" in outcomes["tiny-vae"].detail
    assert isinstance(pipe.vae, AutoencoderTiny)
    first, second = image(pipe), image(pipe)
    assert first.shape == reference.shape and np.isfinite(first).all() and np.array_equal(first, second)


def test_tiny_vae_without_the_hub_is_skipped_with_the_reason(tiny):
    pipe = tiny()
    state.of(pipe).model = None  # as a user's own pipeline: the real TAESD is needed, and the tests run offline
    _, outcomes = optimize(pipe, "tiny-vae")
    assert not outcomes[0].applied and "cannot load an AutoencoderTiny from 'madebyollin/taesd'" in outcomes[0].detail


def test_lcm_lora_is_fused_with_the_lcm_scheduler_and_few_step_defaults(tiny):
    plain = tiny()
    pipe, outcomes = optimize(tiny(), "lcm-lora")
    assert outcomes[0].applied and "UNet batch 1" in outcomes[0].detail
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    assert state.of(pipe).defaults == {"num_inference_steps": 4, "guidance_scale": 1.0}
    q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    fused, original = pipe.unet.get_submodule(q), plain.unet.get_submodule(q)
    assert type(fused) is torch.nn.Linear and not torch.equal(fused.weight, original.weight)  # fused, no adapter
    first, second = (pipe("a boat", height=64, width=64, output_type="np", generator=torch.Generator().manual_seed(0),
                          **state.of(pipe).defaults).images for _ in range(2))
    assert first.shape == (1, 64, 64, 3) and np.isfinite(first).all() and np.array_equal(first, second)


def test_lcm_lora_without_the_hub_is_skipped_with_the_reason(tiny):
    pipe = tiny()
    state.of(pipe).model = None
    _, outcomes = optimize(pipe, "lcm-lora")
    assert not outcomes[0].applied and "latent-consistency/lcm-lora-sdv1-5" in outcomes[0].detail


def test_token_merging_merges_the_asked_share_and_unmerge_restores_every_token():
    from sdcpu.algorithms.tome import bipartite_matching

    x = torch.randn(2, 8 * 6, 5)
    merge, unmerge = bipartite_matching(x, 8, 6, merged=10, seed=3)
    assert merge(x).shape == (2, 8 * 6 - 10, 5)
    restored = unmerge(merge(x))
    changed = (restored != x).any(dim=-1).sum(dim=1)  # a merged pair both take their mean: at most 2 tokens per merge
    assert restored.shape == x.shape and 0 < changed.min() and changed.max() <= 2 * 10
    pairs = x.clone()
    pairs[:, 1::2] = pairs[:, 0::2]  # every token has a twin; with seed 3, 12+ sources have theirs as a destination
    merge, unmerge = bipartite_matching(pairs, 8, 6, merged=12, seed=3)
    assert torch.allclose(unmerge(merge(pairs)), pairs, atol=1e-6)
    merge, unmerge = bipartite_matching(x, 8, 6, merged=0)
    assert torch.equal(unmerge(merge(x)), x)


def test_tome_changes_the_image_a_little_and_is_reproducible(optimized, reference):
    pipe, outcomes = optimized("tome=0.5")
    assert outcomes["tome"].applied and "5 self-attentions" in outcomes["tome"].detail
    first, second = image(pipe), image(pipe)
    assert first.shape == reference.shape and np.isfinite(first).all()
    assert np.array_equal(first, second)
    assert 0 < np.abs(first - reference).max() < 0.1


def test_tome_after_a_backend_is_skipped_with_the_reason(optimized):
    _, outcomes = optimized("compile,tome")
    assert not outcomes["tome"].applied and "tome runs without one" in outcomes["tome"].detail


@pytest.mark.parametrize("patch", ["deepcache=2", "tome"])
def test_a_backend_after_a_step_that_patched_the_eager_unet_is_skipped_with_the_reason(tiny, patch):
    """A backend would convert the patched UNet, or reuse an IR of the plain one under the same key, and report both
    steps applied: it is skipped instead, and the patch keeps working."""
    pipe, outcomes = optimize(tiny(), f"{patch},compile")
    assert outcomes[0].applied and not outcomes[1].applied
    assert f"{patch} patched the eager UNet before it: compile would convert" in outcomes[1].detail
    _, again = optimize(pipe, "openvino")  # a second optimize of the same pipeline: the patch is still there
    assert not again[0].applied and f"{patch} patched" in again[0].detail
    assert np.isfinite(image(pipe, steps=2)).all()
