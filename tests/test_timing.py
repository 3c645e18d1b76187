import pytest

from sdcpu.models import schedulers
from sdcpu.pipeline import generate
from sdcpu.pipeline.timing import component_split


def test_split_counts_one_unet_call_per_step_and_restores_the_methods(tiny):
    pipe = tiny()
    schedulers.set_scheduler(pipe, "ddim")
    result = generate.run(pipe, generate.Request("x", steps=3, width=64, height=64))
    assert result.split.calls == {"text_encoder": 2, "unet": 3, "vae": 1}  # prompt + negative, 3 steps, 1 decode
    assert 0 < sum(result.split.seconds.values()) <= result.seconds
    assert "forward" not in vars(pipe.unet) and "decode" not in vars(pipe.vae)


def test_split_restores_methods_when_the_call_fails(tiny):
    pipe = tiny()
    with pytest.raises(RuntimeError, match="boom"):  # the split lets the failure through
        with component_split(pipe):
            raise RuntimeError("boom")
    assert "forward" not in vars(pipe.text_encoder)


def test_split_puts_back_a_method_the_instance_held_itself(tiny):
    """torch.compile's module keeps its compiled forward on the instance, and the compile step sets vae.decode so:
    after a timed call they must be the same objects, not the class's methods."""
    pipe = tiny()
    own_forward, own_decode = pipe.unet.forward, pipe.vae.decode  # bound methods, now instance attributes
    pipe.unet.forward, pipe.vae.decode = own_forward, own_decode
    for _ in range(2):
        generate.run(pipe, generate.Request("x", steps=1, width=64, height=64))
    assert vars(pipe.unet)["forward"] is own_forward and vars(pipe.vae)["decode"] is own_decode
