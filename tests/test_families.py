"""The model-family seam: what a family declares reaches the layers that read it (random builds, task pipelines,
refused steps, the traced denoiser's inputs), and a pipeline of no known family is refused in one line."""

import dataclasses

import pytest
import torch

from sdcpu import families, load_pipeline, optimize
from sdcpu.backends.components import Denoiser, Entry
from sdcpu.errors import UsageError
from sdcpu.families import base, sd
from sdcpu.models import state
from sdcpu.pipeline import generate


def test_every_random_architecture_belongs_to_one_family_that_builds_it():
    assert families.ARCHS == {arch: family for family in families.FAMILIES for arch in family.archs}
    assert sum(len(family.archs) for family in families.FAMILIES) == len(families.ARCHS)  # no name in two families
    pipe = families.of_arch("tiny").build("tiny", 0)
    assert families.of(pipe) is sd.FAMILY and type(pipe).__name__ == sd.FAMILY.pipelines["txt2img"]
    inpainting = families.of_arch("tiny-inpainting").build("tiny-inpainting", 0)
    assert type(inpainting).__name__ == sd.FAMILY.pipelines["inpaint"] and sd.FAMILY.inpainting(inpainting)


def test_a_pipeline_of_no_family_sdcpu_runs_is_refused_with_the_families_it_runs():
    with pytest.raises(UsageError, match=r"FluxPipeline is of no model family sdcpu runs \(sd: "):
        families.named("FluxPipeline")


def test_a_step_its_family_refuses_is_skipped_with_the_familys_reason(monkeypatch):
    refusing = dataclasses.replace(sd.FAMILY, refuses={"tome": "token merging needs a UNet's attention levels"})
    monkeypatch.setattr(families, "FAMILIES", (refusing,))
    pipe = load_pipeline("random:tiny")
    _, outcomes = optimize(pipe, "tome,steps=3")
    assert [(o.applied, o.detail) for o in outcomes][0] == (False, "token merging needs a UNet's attention levels")
    assert outcomes[1].applied  # the family refuses tome only


def test_a_request_that_sets_nothing_takes_its_familys_defaults_under_the_recipes(monkeypatch):
    pipe = load_pipeline("random:tiny")
    assert generate.defaults_for(pipe) == sd.FAMILY.defaults
    own = dataclasses.replace(sd.FAMILY, defaults=base.Defaults(steps=9, guidance=3.0, width=96, height=64))
    monkeypatch.setattr(families, "FAMILIES", (own,))
    optimize(pipe, "steps=4")
    assert generate.defaults_for(pipe) == base.Defaults(steps=4, guidance=3.0, width=96, height=64)


# SDXL's UNet takes two inputs beyond SD's, in diffusers' added_cond_kwargs: a stand-in must hand them on in order.
ADDED = base.Denoiser(inputs=("sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"),
                      added=("text_embeds", "time_ids"))


def test_a_backend_stand_in_hands_on_the_familys_added_inputs_in_order_and_refuses_any_other():
    seen = []
    stand_in = Denoiser(lambda *inputs: seen.append(inputs) or (inputs[0],), {}, ADDED, latent_multiple=2)
    sample, states, embeds, ids = torch.ones(2, 4, 8, 8), torch.ones(2, 77, 32), torch.ones(2, 1280), torch.ones(2, 6)
    out = stand_in(sample, 999, encoder_hidden_states=states,
                   added_cond_kwargs={"text_embeds": embeds, "time_ids": ids}, return_dict=False)
    assert out[0] is sample and len(seen) == 1
    assert [tuple(x.shape) for x in seen[0]] == [(2, 4, 8, 8), (2,), (2, 77, 32), (2, 1280), (2, 6)]
    assert seen[0][1].tolist() == [999.0, 999.0]  # the timestep, one per batch item, as traced
    with pytest.raises(NotImplementedError, match="does not support added_cond_kwargs image_embeds"):
        stand_in(sample, 1, states, added_cond_kwargs={"text_embeds": embeds, "time_ids": ids, "image_embeds": ids})
    with pytest.raises(NotImplementedError, match="does not support timestep_cond"):
        stand_in(sample, 1, states, timestep_cond=torch.ones(2, 4), added_cond_kwargs={"text_embeds": embeds,
                                                                                        "time_ids": ids})
    with pytest.raises(ValueError, match="divisible by 2"):
        stand_in(torch.ones(2, 4, 7, 8), 1, states, added_cond_kwargs={"text_embeds": embeds, "time_ids": ids})


def test_the_traced_entry_rebuilds_added_cond_kwargs_from_positional_tensors():
    calls = []

    class Module(torch.nn.Module):
        def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, return_dict=True):
            calls.append((encoder_hidden_states, added_cond_kwargs, return_dict))
            return (sample,)

    states, embeds, ids = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    Entry(Module(), signature=ADDED)(torch.zeros(1), torch.zeros(1), states, embeds, ids)
    assert calls == [(states, {"text_embeds": embeds, "time_ids": ids}, False)]


def test_the_runtime_a_backend_puts_in_place_is_recorded_with_what_it_supports():
    pipe = load_pipeline("random:tiny")
    assert state.of(pipe).runtime is state.Runtime.EAGER and state.Runtime.EAGER.lora == "peft"
    optimize(pipe, "compile")  # torch.compile is lazy: nothing compiles before a call
    runtime = state.of(pipe).runtime
    assert runtime is state.Runtime.INDUCTOR and runtime.lora is None and runtime.int8 == "pt2e"
