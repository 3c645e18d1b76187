"""The user's LoRAs (sdcpu.pipeline.lora) on random:tiny: parsing and refusals, prompt tags, the LoRA folder, the eager UNet's
adapters, OpenVINO's edited IR weights and its cache, and the backends that refuse a LoRA."""

import dataclasses
import hashlib
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from loras import RANK, write_loras
from sdcpu import use_loras
from sdcpu.errors import Skip, UsageError
from sdcpu.models import state
from sdcpu.models.loras import Folder, Lora, parse, prompt_loras
from sdcpu.system import hardware

# A LoRA of 0.1 x randn factors at rank 4 on every attention projection moves random:tiny's 3-step image by 3e-2 max
# abs (measured): far above float rounding (1e-6), so "differs" is asserted above 1e-3.
CHANGED = 1e-3
# Same weights through the same kernels in one process: what differs is only the order of float sums (kohya's alpha/2
# against B x 0.5, adapter A + (-A) against none), measured 0 to 1.2e-6; 1e-5 leaves room for other ISAs and threads.
SAME_ATOL = 1e-5
# OpenVINO f32 against eager torch: 2.3e-6 measured with a LoRA (2.0e-6 without); test_openvino's bound.
OPENVINO_ATOL = 1e-4


def image(pipe, **kwargs):
    return pipe("a sailing ship", num_inference_steps=3, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(0), **kwargs).images


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny):
    """{seed: (kohya file, peft file)}: LoRAs A (seed 1) and B (seed 2)."""
    pipe, folder = tiny(), tmp_path_factory.mktemp("loras")
    return {seed: write_loras(pipe, folder, seed) for seed in (1, 2)}


@pytest.fixture(scope="module")
def eager(files, tiny):
    """An eager random:tiny pipeline, and its images without a LoRA, with A and with B (peft layout), by name."""
    pipe = tiny()
    images = {"none": image(pipe)}
    for name, seed in (("A", 1), ("B", 2)):
        use_loras(pipe, (Lora(files[seed][1], 0.8),))
        images[name] = image(pipe)
    use_loras(pipe, ())
    return pipe, images


def test_parse_takes_a_trailing_weight_and_hub_ids(files):
    assert parse(files[1][0]) == Lora(files[1][0], 1.0)
    assert parse(f"{files[1][0]}:0.6").weight == 0.6
    assert parse("org/style-lora:-0.5") == Lora("org/style-lora", -0.5)
    assert parse("org/style-lora").name == "style-lora" and Lora(files[1][0]).name == "kohya-1"


@pytest.mark.parametrize("text, message", [
    ("style.safetensors:x", "weight 'x' is not a number"),
    ("style.safetensors:nan", "is not a number"),
    ("style.safetensors:1e30", "the weight 1e30 is out of bounds: from -10 to 10"),
    ("style.safetensors:-10.5", "the weight -10.5 is out of bounds"),
    ("missing.safetensors", "no such file"),
    ("not-an-id", "neither a .safetensors file, a folder nor a hub id"),
])
def test_parse_refuses_bad_input_in_one_line(text, message):
    with pytest.raises(UsageError, match=message) as caught:
        parse(text)
    assert "\n" not in str(caught.value)


def test_a_missing_path_that_looks_like_a_hub_id_is_a_path_where_its_folder_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "loras").mkdir()
    with pytest.raises(UsageError, match="loras/mine: no such file or folder .read as a path, since loras is a folder"):
        parse("loras/mine")


def test_a_pickle_needs_trust_pickle(tmp_path):
    path = tmp_path / "style.bin"
    path.write_bytes(b"")
    with pytest.raises(UsageError, match="can run code: pass --trust-pickle"):
        parse(str(path))
    assert parse(str(path), trust_pickle=True).trust_pickle


def test_prompt_loras_takes_a1111_tags_out():
    assert prompt_loras("a castle <lora:ink:0.7>, at dusk <lora:film>") == (
        "a castle, at dusk", (("ink", 0.7), ("film", 1.0)))
    assert prompt_loras("no tags") == ("no tags", ())
    with pytest.raises(UsageError, match="not a number"):
        prompt_loras("<lora:ink:strong>")


def test_folder_lists_safetensors_and_refuses_paths(tmp_path):
    (tmp_path / "ink.safetensors").write_bytes(b"")
    (tmp_path / "old.ckpt").write_bytes(b"")
    folder = Folder(tmp_path)
    assert folder.names() == ["ink"] and folder.resolve("ink") == tmp_path / "ink.safetensors"
    for name in ("../ink", "sub/ink", "..", "", "old", "C:\\ink"):
        with pytest.raises(UsageError):
            folder.resolve(name)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.safetensors"
    outside.write_bytes(b"")
    (tmp_path / "out.safetensors").symlink_to(outside)
    (tmp_path / "in.safetensors").symlink_to(tmp_path / "ink.safetensors")  # a link inside the folder is its LoRA
    assert folder.names() == ["in", "ink"]
    with pytest.raises(UsageError, match="'out' links outside the LoRA folder: refused"):
        folder.resolve("out")
    with pytest.raises(UsageError, match=r"'nope' is not in the LoRA folder \(in, ink\)$"):
        folder.resolve("nope")


def test_eager_lora_changes_the_image_and_none_gives_the_base_back(eager):
    pipe, images = eager
    assert np.abs(images["A"] - images["none"]).max() > CHANGED
    assert np.abs(images["A"] - images["B"]).max() > CHANGED
    np.testing.assert_allclose(image(pipe), images["none"], rtol=0, atol=SAME_ATOL)


def test_kohya_and_peft_layouts_of_one_lora_make_the_same_image(eager, files):
    pipe, images = eager
    use_loras(pipe, (Lora(files[1][0], 0.8),))
    np.testing.assert_allclose(image(pipe), images["A"], rtol=0, atol=SAME_ATOL)
    # A LoRA and its negative cancel: set_adapters sums weighted adapters
    use_loras(pipe, (Lora(files[1][0], 0.8), Lora(files[1][1], -0.8)))
    np.testing.assert_allclose(image(pipe), images["none"], rtol=0, atol=SAME_ATOL)
    use_loras(pipe, ())


def test_fused_sets_make_the_adapters_images_and_switching_puts_the_weights_back_exactly(eager, files):
    pipe, images = eager
    weights = {name: p.detach().clone() for name, p in pipe.unet.named_parameters() if "lora_" not in name}
    for name, seed in (("A", 1), ("B", 2)):
        use_loras(pipe, (Lora(files[seed][1], 0.8),), fuse=True)
        # fused W + dW against W x + B(A x): another order of float sums, same bound
        np.testing.assert_allclose(image(pipe), images[name], rtol=0, atol=SAME_ATOL, err_msg=name)
    use_loras(pipe, ())
    restored = {name: p for name, p in pipe.unet.named_parameters() if "lora_" not in name}
    assert restored.keys() == weights.keys()  # the same layers, the LoRA-wrapped ones included
    assert [name for name, p in restored.items() if not torch.equal(p, weights[name])] == []
    np.testing.assert_allclose(image(pipe), images["none"], rtol=0, atol=SAME_ATOL)


def test_a_lora_named_twice_is_refused(eager, files):
    with pytest.raises(UsageError, match="named twice"):
        use_loras(eager[0], (Lora(files[1][0]), Lora(files[1][0], 0.5)))


def test_compile_refuses_a_lora_with_the_reason(files, tiny):
    from sdcpu import optimize

    pipe, _ = optimize(tiny(), "compile")  # lazy: nothing compiles before a call
    with pytest.raises(Skip, match="froze the UNet's weights"):
        use_loras(pipe, (Lora(files[1][0]),))


@pytest.mark.parametrize("runtime", [state.Runtime.OPENVINO_INT8, state.Runtime.PT2E_INT8])
def test_int8_refuses_a_lora_with_the_reason(files, runtime, tiny):
    pipe = tiny()
    state.of(pipe).runtime = runtime  # what the int8 step records after openvino or compile (NNCF's takes minutes)
    with pytest.raises(Skip, match="quantized weights"):
        use_loras(pipe, (Lora(files[1][0]),))


@pytest.fixture(scope="module")
def on_openvino(tiny, tmp_path_factory):
    """random:tiny on OpenVINO f32, and the digests of its IR files and the compiled-blob cache's file names. Its IR
    and blob cache in a home of its own: the other xdist worker's OpenVINO tests write blobs into the shared one,
    which would change the names this module checks are left alone."""
    pytest.importorskip("openvino")
    from sdcpu.backends import openvino
    from sdcpu.recipes import Step

    home = tmp_path_factory.mktemp("lora-openvino-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(openvino, "sdcpu_home", lambda: home)
        pipe = tiny()
        openvino.apply(pipe, Step("openvino"), dataclasses.replace(hardware.detect(), flags=frozenset()))  # f32
        image(pipe)  # compiles the base models at 64x64 (their blobs go to the cache)
        yield pipe, disk(pipe)


def disk(pipe) -> dict:
    folder = pipe.unet.run.path.parent
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}
    return {"ir": digests, "blobs": sorted(p.name for p in (folder.parent / "compiled").rglob("*"))}


def test_openvino_lora_matches_eager_and_switching_back_hits_the_cache(on_openvino, eager, files, monkeypatch):
    from sdcpu.backends.openvino_lora import SETS_VARIABLE

    monkeypatch.setenv(SETS_VARIABLE, "2")  # A and B both kept (one, by default: B would replace A)
    pipe, before = on_openvino
    _, images = eager
    switch_to = {"A": (Lora(files[1][1], 0.8),), "B": (Lora(files[2][1], 0.8),), "none": ()}
    for name in ("A", "B", "A", "none"):
        use_loras(pipe, switch_to[name])
        np.testing.assert_allclose(image(pipe), images[name], rtol=0, atol=OPENVINO_ATOL, err_msg=name)
    switch = state.of(pipe).lora
    assert (switch.misses, switch.hits) == (2, 1)  # A and B compiled once each; A again came from memory
    assert disk(pipe) == before  # the IR untouched, no blob written for an edited model


def test_openvino_takes_kohya_keys_and_keeps_only_the_last_sets(on_openvino, eager, files, monkeypatch):
    from sdcpu.backends.openvino_lora import kept_sets, SETS_VARIABLE

    monkeypatch.setenv(SETS_VARIABLE, "2")
    pipe, _ = on_openvino
    for seed in (1, 2):
        use_loras(pipe, (Lora(files[seed][1], 0.8),))
    use_loras(pipe, (Lora(files[1][0], 0.8),))  # A in kohya's layout: another source, so another set
    np.testing.assert_allclose(image(pipe), eager[1]["A"], rtol=0, atol=OPENVINO_ATOL)
    kept = [key[0][0] for key in state.of(pipe).lora.kept]
    assert kept_sets() == 2 and kept == [files[2][1], files[1][0]]  # A (peft layout), the oldest, went
    use_loras(pipe, ())
    monkeypatch.setenv(SETS_VARIABLE, "many")
    with pytest.raises(UsageError, match="SDCPU_LORA_SETS='many': a whole number >= 0"):
        kept_sets()


TINY = ["--model", "random:tiny", "--size", "64x64", "--steps", "2"]


def test_generate_applies_loras_and_records_them_a1111_style(files, tmp_path, capsys):
    from PIL import Image

    from sdcpu.cli import main

    kohya, peft = files[1][0], files[2][1]
    assert main(["generate", "a boat", *TINY, "--recipe", "baseline", "-o", str(tmp_path / "plain.png")]) == 0
    assert main(["generate", "a boat", *TINY, "--recipe", "baseline", "--lora", f"{kohya}:0.8", "--lora", peft,
                 "-o", str(tmp_path / "lora.png")]) == 0
    assert "lora: peft adapters on the eager UNet and text_encoder, fused into their weights: kohya-1:0.8, peft-2:1" in (
        capsys.readouterr().out)
    made = Image.open(tmp_path / "lora.png")
    digests = [hashlib.sha256(open(path, "rb").read()).hexdigest()[:12] for path in (kohya, peft)]
    assert made.text["parameters"].startswith("a boat <lora:kohya-1:0.8> <lora:peft-2:1>\n")
    assert f'Lora hashes: "kohya-1: {digests[0]}, peft-2: {digests[1]}"' in made.text["parameters"]
    plain = np.asarray(Image.open(tmp_path / "plain.png"), dtype=float)
    assert np.abs(np.asarray(made, dtype=float) - plain).max() > 1  # levels of 255: the LoRAs changed the image


@pytest.mark.parametrize("recipe, lora_arg, message", [
    ("baseline", "missing.safetensors", "--lora missing.safetensors: no such file"),  # before the model loads
    ("compile", "FILE", "--lora cannot apply on recipe compile: the compile step froze"),
])
def test_generate_refuses_a_lora_it_cannot_apply_in_one_line(files, tmp_path, capsys, recipe, lora_arg, message):
    from sdcpu.cli import main

    out = tmp_path / "out"
    lora_arg = files[1][0] if lora_arg == "FILE" else lora_arg
    assert main(["generate", "x", *TINY, "--recipe", recipe, "--lora", lora_arg, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() or not list(out.iterdir()), "nothing written on error"


# bf16 without native support is emulated: 24 s on 2 cores, hence slow
@pytest.mark.parametrize("recipe", ["lcm-lora,deepcache=2",
                                    pytest.param("channels_last,bf16!,tome", marks=pytest.mark.slow)])
def test_eager_recipes_take_a_lora_and_give_the_base_back(files, recipe, tiny):
    from sdcpu import optimize

    pipe, outcomes = optimize(tiny(), recipe)
    assert all(outcome.applied for outcome in outcomes), outcomes
    base = image(pipe)
    use_loras(pipe, (Lora(files[1][0], 0.8),))
    assert np.abs(image(pipe) - base).max() > CHANGED
    use_loras(pipe, ())
    # disabled adapters leave the base layers' weights as they were, in bf16 too: the same kernels on the same inputs
    np.testing.assert_allclose(image(pipe), base, rtol=0, atol=SAME_ATOL)


def test_a_lora_of_another_model_is_one_line_on_eager_and_openvino(on_openvino, eager, tmp_path):
    wrong = tmp_path / "wrong.safetensors"  # random:tiny's first attention projection, at other widths
    layer = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{layer}.lora_down.weight": torch.zeros(RANK, 320), f"{layer}.lora_up.weight": torch.zeros(320, RANK),
               f"{layer}.alpha": torch.tensor(float(RANK))}, wrong)
    for pipe in (eager[0], on_openvino[0]):
        with pytest.raises(UsageError, match="LoRA 'wrong': cannot load it") as caught:
            use_loras(pipe, (Lora(str(wrong)),))
        assert "\n" not in str(caught.value) and str(tmp_path) not in str(caught.value)
    use_loras(eager[0], ())


@pytest.mark.parametrize("data", [struct.pack("<Q", 2**62) + b"{}", b"a text file, so named\n"])
def test_a_malformed_safetensors_lora_is_one_line_naming_it_and_the_base_stays(eager, tmp_path, data):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data)
    pipe, images = eager
    with pytest.raises(UsageError, match=r"^LoRA 'bad': cannot load it \(SafetensorError: ") as caught:
        use_loras(pipe, (Lora(str(bad)),))
    assert "\n" not in str(caught.value) and str(tmp_path) not in str(caught.value)
    use_loras(pipe, ())
    np.testing.assert_allclose(image(pipe), images["none"], rtol=0, atol=SAME_ATOL)
