"""The bench's peers run for real in their own environments (made by scripts/setup-NAME.sh), on random:tiny and
random:tiny-sdxl-turbo or, where the engine knows only real SD architectures, random:sd15. Skipped with the reason
where an environment is missing."""

import os
import sys

import pytest

from sdcpu.bench import ladders, peers, runner


def _needs(name: str):
    reason = peers.PEERS[name].missing(os.environ)
    if name == "openvino-genai":
        reason = reason or peers.EXPORTER.missing(os.environ)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


@pytest.mark.parametrize("arch", ["tiny", "tiny-sdxl-turbo", "tiny-flux2"])
def test_sdcpp_refuses_a_test_size_model_with_the_reason(arch):
    """sd.cpp sizes its networks from the architecture its tensor names say (SDXL's real widths), so a tiny model's
    weights fail its shape checks (then it crashes): the peer is refused before any checkpoint is written."""
    spec = {"protocol": ladders.Protocol(model=f"random:{arch}").to_dict()}
    with pytest.raises(RuntimeError, match=f"cannot run random:{arch}, a test-size model: it builds each network"):
        peers.command("stable-diffusion.cpp", spec, None, {"SDCPU_SDCPP_PYTHON": sys.executable})


def test_sdcpp_f32_is_refused_for_a_bf16_family_before_any_checkpoint_is_written(tmp_path):
    import shutil

    from sdcpu.models import random_models, single_file

    folder = tmp_path / "klein"  # named by a folder of its own: not refused as a test-size random model, and no
    shutil.copytree(random_models.ensure_built("tiny-flux2"), folder)  # other test has written its checkpoint
    spec = {"protocol": ladders.Protocol(model=str(folder)).to_dict()}
    with pytest.raises(RuntimeError, match="f32 would hold flux2's bfloat16 weights in float32"):
        peers.command("stable-diffusion.cpp:f32", spec, None, {"SDCPU_SDCPP_PYTHON": sys.executable})
    assert not single_file.checkpoint_path(folder).exists()


@pytest.mark.slow  # optimum-cli exports random:tiny to IR once (~1 minute on 2 cores), then GenAI compiles it
@_needs("openvino-genai")
def test_genai_draws_torch_noise_and_makes_the_diffusers_image(tmp_path, sdcpu_home):
    protocol = ladders.Protocol(model="random:tiny", width=64, height=64, steps=2, runs=2, warmup_steps=1)
    rungs = (ladders.Rung("baseline", "baseline"), ladders.Rung("genai", "baseline", peer="openvino-genai"))
    rows = runner.run(protocol, rungs, tmp_path)
    genai = rows[1]
    assert "failed" not in genai, genai.get("failed")
    assert genai["recipe_resolved"].startswith("OpenVINO GenAI 2026.4.1") and len(genai["times_s"]) == 2
    assert genai["scheduler"] == "PNDMScheduler" and genai["fidelity_note"] is None
    # The same noise (TorchGenerator) and scheduler: the image is diffusers' up to OpenVINO's f32 kernels (51 dB
    # measured at 64x64); an image from another noise is ~10 dB from it.
    assert genai["fidelity"]["psnr_db"] > 30, genai["fidelity"]


@pytest.mark.slow  # each peer exports or loads random:tiny, then compiles it (a minute or two on 2 cores)
@pytest.mark.parametrize("peer", [pytest.param("optimum-intel", marks=_needs("optimum-intel")),
                                  pytest.param("openvino-genai", marks=_needs("openvino-genai"))])
@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_the_openvino_peers_edit_the_bench_input_as_diffusers_does(peer, task, tmp_path, sdcpu_home):
    """Each peer's own img2img or inpainting pipeline on the bench's input image: the same noise and scheduler as
    diffusers, so its image is diffusers' up to OpenVINO's f32 kernels (txt2img measured 51 dB for GenAI, 89 for
    optimum-intel at 64x64; img2img 51 and 89 too); an image from other noise or another input is ~10 dB away."""
    protocol = ladders.Protocol(model="random:tiny", width=64, height=64, steps=4, runs=1, warmup_steps=1, task=task,
                                strength=0.5 if task == "img2img" else None)
    rows = runner.run(protocol.validate(), (ladders.Rung("baseline", "baseline"),
                                            ladders.Rung(peer, "baseline", peer=peer)), tmp_path)
    row = rows[1]
    assert "failed" not in row, row.get("failed")
    pipeline = {"img2img": ("Img2Img", "Image2Image"), "inpaint": ("Inpaint", "Inpainting")}[task]
    assert any(name in row["recipe_resolved"] for name in pipeline), row["recipe_resolved"]
    assert row["steps_run"] == (2 if task == "img2img" else 4)
    assert row["fidelity"]["psnr_db"] > 30, row["fidelity"]


@pytest.mark.slow  # each peer exports random:tiny-sdxl-turbo (both text encoders too), then compiles it: minutes
@pytest.mark.parametrize("peer, pipeline", [
    pytest.param("optimum-intel", "OVStableDiffusionXLPipeline", marks=_needs("optimum-intel")),
    pytest.param("openvino-genai", "Text2ImagePipeline", marks=_needs("openvino-genai"))])
def test_the_openvino_peers_run_sdxl_turbo_as_diffusers_does(peer, pipeline, tmp_path, sdcpu_home):
    """SDXL-Turbo as it is run (1 step of Euler Ancestral on trailing timesteps, no guidance), in each peer's SDXL
    pipeline: the same noise and scheduler as diffusers, so its image is diffusers' up to OpenVINO's f32 kernels
    (measured at 64x64: optimum-intel's identical, GenAI's 51 dB)."""
    protocol = ladders.Protocol(model="random:tiny-sdxl-turbo", width=64, height=64, steps=1, guidance=0.0, runs=1,
                                warmup_steps=1)
    rows = runner.run(protocol.validate(), (ladders.Rung("baseline", "baseline"),
                                            ladders.Rung(peer, "baseline", peer=peer)), tmp_path)
    row = rows[1]
    assert "failed" not in row, row.get("failed")
    assert pipeline in row["recipe_resolved"] and row["scheduler"] == "EulerAncestralDiscreteScheduler"
    assert row["cfg_batch"] == 1 and len(row["times_s"]) == 1
    assert row["fidelity"]["psnr_db"] > 30, row["fidelity"]
