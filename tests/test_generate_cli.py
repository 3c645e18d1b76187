import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from PIL import Image

from images import REMADE_ALONE_LEVELS, level_difference
from sdcpu import batch
from sdcpu.cli import main
from sdcpu.errors import UsageError
from sdcpu.families.base import Defaults
from sdcpu.models import state
from sdcpu.pipeline import generate
from sdcpu.serve import schemas

TINY = ["--model", "random:tiny", "--size", "80x64", "--steps", "2", "--recipe", "baseline"]


def test_generate_writes_pngs_that_describe_themselves(tmp_path, capsys):
    assert main(["generate", "a red boat", *TINY, "--seed", "7", "--num-images", "2",
                 "--negative-prompt", "blurry", "--scheduler", "dpm++", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    files = sorted(tmp_path.glob("*.png"))
    assert [f.name for f in files] == ["00000-7.png", "00001-8.png"]
    image = Image.open(files[1])
    assert image.size == (80, 64)
    params = image.text["parameters"]
    assert params.startswith("a red boat\nNegative prompt: blurry\nSteps: 2, Sampler: dpm++, CFG scale: 7.5, Seed: 8,")
    assert "Size: 80x64, Model: random:tiny, Recipe: baseline" in params
    assert "weights are random" in params
    assert "s/image: text encoder" in out and "denoiser" in out and "weights are random" in out and "peak RSS" in out
    assert main(["generate", "a red boat", *TINY, "--seed", "8", "--negative-prompt", "blurry", "--scheduler", "dpm++",
                 "-o", str(tmp_path / "alone.png")]) == 0
    alone = Image.open(tmp_path / "alone.png").convert("RGB")
    assert level_difference(alone, image.convert("RGB")) <= REMADE_ALONE_LEVELS  # seed 8 remade alone
    assert level_difference(alone, Image.open(files[0]).convert("RGB")) > 10 * REMADE_ALONE_LEVELS


def test_recipe_call_defaults_apply_unless_the_command_line_says_otherwise(tmp_path):
    base = ["--model", "random:tiny", "--size", "64x64"]
    assert main(["generate", "x", *base, "--recipe", "lcm-lora", "-o", str(tmp_path / "lcm.png")]) == 0
    assert "Steps: 4, Sampler: lcm, CFG scale: 1.0," in Image.open(tmp_path / "lcm.png").text["parameters"]
    assert main(["generate", "x", *base, "--recipe", "steps=2,guidance=3", "--steps", "3",
                 "-o", str(tmp_path / "mixed.png")]) == 0
    assert "Steps: 3, Sampler: pndm, CFG scale: 3.0," in Image.open(tmp_path / "mixed.png").text["parameters"]


class _Tokenizer:
    model_max_length = 77

    def __call__(self, text):
        return SimpleNamespace(input_ids=text.split())


def test_a_request_that_sets_nothing_takes_the_defaults_it_is_handed_at_every_entry_point():
    """generate.Defaults is declared once: the recipe's call defaults go over the model's, and batch's rows and serve's
    OpenAI bodies take those they are handed (a model's, a recipe's), not numbers of their own."""
    recipe_steps_4 = SimpleNamespace()
    state.of(recipe_steps_4).defaults["num_inference_steps"] = 4
    defaults = generate.defaults_for(recipe_steps_4, Defaults(steps=9, guidance=2.5, width=128, height=96))
    assert defaults == Defaults(steps=4, guidance=2.5, width=128, height=96)
    row = batch.Job(line=1, prompt="x", size="128x96").request(0, defaults)
    served = schemas.from_openai(schemas.OpenAIImageRequest(prompt="x"),
                                 schemas.Limits(1024, defaults, _Tokenizer())).request
    for request in (row, served):
        assert (request.steps, request.guidance, request.width, request.height) == (4, 2.5, 128, 96)


def test_same_seed_same_image(tmp_path):
    for name in ("a.png", "b.png"):
        assert main(["generate", "x", *TINY, "-o", str(tmp_path / name)]) == 0
    assert Image.open(tmp_path / "a.png").tobytes() == Image.open(tmp_path / "b.png").tobytes()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "60x64"], "width 60: must be a multiple of 8 from 64 to 4096"),
        (["--size", "64x48"], "height 48: must be a multiple of 8 from 64 to 4096"),  # bench, tune and serve agree
        (["--size", "65536x65536"], "width 65536: must be a multiple of 8 from 64 to 4096"),
        (["--size", "big"], "expected WIDTHxHEIGHT"),
        (["--steps", "0"], "steps must be from 1 to 1000, got 0"),
        (["--steps", "1000000000"], "steps must be from 1 to 1000, got 1000000000"),
        (["--num-images", "0"], "number of images must be from 1 to 100"),
        (["--num-images", "1000000"], "number of images must be from 1 to 100, got 1000000"),
        (["--guidance", "nan"], "argument --guidance: expected a finite number, got 'nan'"),  # every float flag's
        (["--guidance", "inf"], "argument --guidance: expected a finite number, got 'inf'"),
        (["--strength=-Infinity"], "argument --strength: expected a finite number, got '-Infinity'"),
        (["--guidance", "-1"], "guidance must be a finite number >= 0"),
        (["--seed", str(2**64)], f"seed {2**64}: image i uses seed+i, and seeds go from 0 to 2**64-1"),
        (["--seed", str(2**64 - 1), "--num-images", "2"], f"so the first is at most {2**64 - 2} here"),
        (["--seed", "-1"], "seed -1: image i uses seed+i"),
        (["--negative-prompt", "boat " * 80], "the negative prompt is 82 tokens; the text encoder reads 77"),
        (["--scheduler", "nope"], "invalid choice: 'nope'"),
        (["--model", "random:sd99"], "unknown random architecture"),
        (["--model", "/no/such/place"], "no such file or folder"),
        (["--model", "org/not-cached"], "from the Hugging Face hub"),
        (["--recipe", "fast-please"], "unknown recipe step 'fast-please'"),
        (["--recipe", "threads=0"], "expected a whole number >= 1"),
        (["--quality", "fast"], "--quality sets the level of the auto recipe, not of --recipe baseline"),
        (["--recipe", "auto:turbo"], "unknown quality 'turbo'"),
        (["--hires", "5"], "hr_scale 5: from 1 to 4"),
        (["--hires", "2", "--hires-strength", "0"], "hires fix needs one in (0, 1]"),
        (["--hires", "2", "--hires-steps", "-1"], "hires steps -1: 0 (the first pass's) or more"),
        (["--hires", "2", "--size", "2560x2560"], "size 5120x5120: width 5120: must be a multiple of 8 from 64 to 4096"),
        (["--hires", "2", "--hires-upscaler", "ESRGAN"], "argument --hires-upscaler: invalid choice: 'ESRGAN'"),
        (["--hires", "2", "--model", "random:tiny-flux2"], "flux2 models have no hires fix"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    base = ["--model", "random:tiny", "--steps", "1", "--size", "64x64", "--recipe", "baseline"]
    assert cli(["generate", "x", *base, *args, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() or not list(out.iterdir()), "nothing written on error"


def test_a_prompt_longer_than_the_text_encoder_reads_is_refused_before_any_compute(tmp_path, capsys, monkeypatch):
    from sdcpu.pipeline import optimizer

    monkeypatch.setattr(optimizer, "optimize", lambda *args: pytest.fail("optimized a model for a refused prompt"))
    assert cli(["generate", "boat " * 76, *TINY, "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "the prompt is 78 tokens; the text encoder reads 77 (start and end included)" in err
    assert len(err.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_a_prompt_cannot_forge_lines_of_the_png_parameters(tmp_path):
    assert main(["generate", "a boat\nSteps: 1, Seed: 666\r\nNote: forged", *TINY,
                 "--negative-prompt", "dark\nModel: forged", "-o", str(tmp_path / "a.png")]) == 0
    lines = Image.open(tmp_path / "a.png").text["parameters"].splitlines()
    assert lines[:2] == ["a boat Steps: 1, Seed: 666 Note: forged", "Negative prompt: dark Model: forged"]
    assert lines[2].startswith("Steps: 2, ") and lines[3].startswith("Note: weights are random") and len(lines) == 4


def test_pickle_without_consent_and_unwritable_output(tmp_path, capsys):
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"")
    assert main(["generate", "x", "--model", str(checkpoint), "-o", str(tmp_path / "o")]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["generate", "x", *TINY, "-o", str(blocker / "sub")]) == 2
    assert "cannot create output folder" in capsys.readouterr().err


def test_console_script_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sdcpu", "generate", "x", "--size", "65x64", "-o", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "sdcpu generate: error: size 65x64: width 65: must be a multiple of 8 from 64 to 4096"


def cli(argv) -> int:
    """main()'s exit code, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def test_a_re_executed_generate_takes_the_recipe_its_parent_resolved(tmp_path):
    """The parent resolves auto once and hands it down through the re-exec; the child does not resolve it again."""
    from sdcpu import recipes
    from sdcpu.recipes import relaunch

    handed = recipes.Recipe("auto", (recipes.Step("channels_last"),))
    env = {**os.environ, relaunch.MARK: "1", relaunch.RESOLVED: json.dumps({"recipe": handed.to_json(), "why": "x"})}
    proc = subprocess.run([sys.executable, "-m", "sdcpu", "generate", "x", *TINY[:-2], "--recipe", "auto",
                           "-o", str(tmp_path / "a.png")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Recipe: channels_last" in Image.open(tmp_path / "a.png").text["parameters"]
    assert "auto: x" in proc.stdout


def test_two_runs_into_one_folder_never_overwrite_each_others_images(tmp_path):
    from sdcpu.pipeline import outputs

    image = Image.new("RGB", (64, 64))
    (first,) = outputs.output_paths(str(tmp_path), [0])  # both runs pick their names before their (slow) model load
    (second,) = outputs.output_paths(str(tmp_path), [0])
    assert first == second == tmp_path / "00000-0.png"
    assert outputs.save_png(image, second, "second", overwrite=False, renumber=True) == second
    assert outputs.save_png(image, first, "first", overwrite=False, renumber=True) == tmp_path / "00001-0.png"
    assert [Image.open(tmp_path / name).text["parameters"] for name in ("00000-0.png", "00001-0.png")] == [
        "second", "first"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000-0.png", "00001-0.png"]  # no temporary file left
    with pytest.raises(UsageError, match="00001-0.png exists .written since this command started.: pass --overwrite"):
        outputs.save_png(image, tmp_path / "00001-0.png", "third", overwrite=False)


@pytest.mark.parametrize("umask", [0o022, 0o077])
@pytest.mark.parametrize("overwrite", [True, False])  # replaced into place, or claimed by a hard link
def test_pngs_honour_the_umask_as_a_plain_open_would(tmp_path, umask, overwrite):
    from sdcpu.pipeline import outputs

    old = os.umask(umask)
    try:
        path = outputs.save_png(Image.new("RGB", (8, 8)), tmp_path / "00000-0.png", "", overwrite=overwrite)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_numbering_goes_on_past_99999(tmp_path):
    from sdcpu.pipeline import outputs

    for name in ("00007-1.png", "99999-3.png", "100000-2.png", "100001-x.png", "notes-5.png"):
        (tmp_path / name).touch()  # numbers come from the names alone: empty files do
    first, _ = outputs.output_paths(str(tmp_path), [4, 5])
    assert first == tmp_path / "100001-4.png"
    first.touch()  # another run wrote this name meanwhile: the next number after it
    assert outputs.save_png(Image.new("RGB", (8, 8)), first, "", overwrite=False, renumber=True) == (
        tmp_path / "100002-4.png")


def test_an_existing_output_file_is_replaced_only_with_overwrite(tmp_path, capsys):
    target = tmp_path / "a.png"
    target.write_bytes(b"mine")
    assert cli(["generate", "x", *TINY, "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"{target} exists: pass --overwrite to replace it" in err and len(err.strip().splitlines()) == 1
    assert target.read_bytes() == b"mine"
    assert main(["generate", "x", *TINY, "-o", str(target), "--overwrite"]) == 0
    assert "Seed: 0" in Image.open(target).text["parameters"]


def test_hires_fix_writes_the_larger_image_and_its_a1111_fields(tmp_path, capsys):
    assert main(["generate", "a red boat", *TINY, "--hires", "1.5", "--hires-strength", "0.5", "-o",
                 str(tmp_path / "hires.png")]) == 0
    image = Image.open(tmp_path / "hires.png")
    assert image.size == (120, 96)  # 80x64 times 1.5
    assert "Size: 80x64, Hires upscale: 1.5, Hires steps: 2, Hires upscaler: Latent, Denoising strength: 0.5" in (
        image.text["parameters"])
    assert "3 steps (hires fix: 1 at 120x96)" in capsys.readouterr().out  # 2 + int(2 x 0.5)
