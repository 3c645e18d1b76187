"""sdcpu bench: ladders and protocol (pure), the runner end to end on random:tiny, the report from a fixture of rows,
and the CLI's refusals."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from machines import NAMES, machine
from sdcpu import recipes
from sdcpu.bench import inputs, ladders, peers, report, runner
from sdcpu.cli import main
from sdcpu.errors import UsageError
from sdcpu.pipeline.generate import Request
from sdcpu.recipes import auto_rules

FIXTURE = Path(__file__).parent / "fixtures" / "bench"
TINY = ladders.Protocol(model="random:tiny", width=64, height=64, steps=2, runs=2, warmup_steps=1)


def test_presets_and_validation():
    assert ladders.Protocol().to_dict() == dict(
        model="random:sd15", prompt="sailing ship in storm by Rembrandt", negative_prompt="", width=512, height=512,
        steps=20, runs=10, warmup_steps=10, seed=0, guidance=7.5, num_images=1, preset="seed", task="txt2img",
        strength=None)
    old = {k: v for k, v in TINY.to_dict().items() if k not in ("task", "strength")}  # a row from before tasks
    assert ladders.Protocol.from_dict(old) == TINY
    # The flat dict is what a child reads back (sdcpu's or a peer's): it round-trips, and the call is generate's.
    assert ladders.Protocol.from_dict(TINY.to_dict()) == TINY
    call = TINY.request(steps=1)
    assert type(call) is Request and (call.prompt, call.width, call.steps, call.seed) == (TINY.prompt, 64, 1, 0)
    with pytest.raises(UsageError, match="one image"):
        ladders.Protocol(num_images=2).validate()
    with pytest.raises(UsageError, match="width 100: must be a multiple of 8 from 64 to 4096"):
        ladders.Protocol(width=100).validate()
    with pytest.raises(UsageError, match="runs must be at least 1"):
        ladders.Protocol(runs=0).validate()
    # img2img at 0.5 of 20 steps runs the last 10; a 1-step warm-up would run none, so it runs the fewest that run one
    edit = dataclasses.replace(TINY, task="img2img", strength=0.5, steps=20).validate()
    assert (edit.steps_run, edit.warmup_steps_used, edit.run_count(edit.warmup_steps_used)) == (10, 2, 1)
    assert ladders.Protocol.from_dict(edit.to_dict()) == edit


@pytest.mark.parametrize("text, recipes", [
    ("baseline,system,auto", ["baseline", "system", "auto"]),
    ("jemalloc,iomp,pin", ["jemalloc,iomp,pin"]),
    ("baseline; channels_last,compile ;auto", ["baseline", "channels_last,compile", "auto"]),
    ("baseline,auto:fast", ["baseline", "auto:fast"]),
])
def test_recipes_option(text, recipes):
    assert [rung.recipe for rung in ladders.parse_recipes(text)] == recipes


def test_recipes_option_runs_peers():
    rungs = ladders.parse_recipes("baseline,peer:openvino-genai,peer:stable-diffusion.cpp:q8_0,auto")
    assert [(rung.name, rung.peer) for rung in rungs] == [
        ("baseline", None), ("openvino-genai (peer)", "openvino-genai"),
        ("stable-diffusion.cpp q8_0 (peer)", "stable-diffusion.cpp:q8_0"), ("auto", None)]
    assert peers.parse("stable-diffusion.cpp") == (peers.PEERS["stable-diffusion.cpp"], "f32")  # the default variant


def test_a_peer_that_cannot_be_compared_says_why_instead_of_a_number(tmp_path):
    """A peer drawing its own noise: the runner keeps its reason, the report prints it and no PSNR."""
    reference = {"rung": "baseline", "image": "a.png"}
    row = {"index": 1, "rung": "other (peer)", "recipe": "baseline", "peer": "stable-diffusion.cpp", "median_s": 2.0,
           "s_per_step": 1.0, "parent": None, "image": "b.png", "matmul_peak_gflop_s": {"float32": 1.0},
           "fidelity_note": "its own RNG: another noise",  # a peer's steps are its own, not recipe steps
           "steps": [{"step": "export", "applied": True, "s": 224.9, "detail": "int8 IR exported"}]}
    row["fidelity"] = runner.compare(row, reference, tmp_path)  # no image is read: there are none in tmp_path
    assert row["fidelity"] == {"reference": "baseline", "not_comparable": "its own RNG: another noise"}
    cells = report.cells(row, {**reference, "median_s": 4.0}, {})
    assert cells[3:5] == ["2.00", "2.00x"] and cells[-3:-1] == ["n/a", "n/a"]
    assert "no fidelity figure: its own RNG: another noise" in cells[-1]


def test_recipes_option_refuses_a_bad_recipe_before_running():
    with pytest.raises(UsageError, match="unknown recipe step 'warp'"):
        ladders.parse_recipes("baseline;warp")
    with pytest.raises(UsageError, match="unknown quality 'turbo'"):
        ladders.parse_recipes("baseline;auto:turbo")


# The seed's framework rung by class, with and without OpenVINO: what auto's rules take at `high` in a one-shot process
# beside the system rung's steps (OpenVINO without the preloaded allocator it aborts beside); never the seed's bf16 +
# compile, whose inductor compile takes minutes in each process.
SEED_FRAMEWORK = {
    "amx": ("iomp,pin,openvino=bf16", "jemalloc,iomp,pin,bf16"),
    "avx512_bf16": ("iomp,pin,openvino=bf16", "jemalloc,iomp,pin,bf16"),
    "avx512": ("iomp,pin,openvino=f32", "jemalloc,iomp,pin"),
    "avx2": ("iomp,pin,openvino=f32", "jemalloc,iomp,pin"),
    "aarch64_bf16": ("jemalloc,iomp,pin,bf16", "jemalloc,iomp,pin,bf16"),
    "aarch64": ("jemalloc,iomp,pin", "jemalloc,iomp,pin"),
    "x86": ("jemalloc,iomp,pin", "jemalloc,iomp,pin"),
}


@pytest.mark.parametrize("openvino", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_seed_ladder_adapts_its_framework_rung_to_the_cpu(installed, name, openvino):
    installed(*(("openvino", "nncf") if openvino else ()))
    framework = SEED_FRAMEWORK[auto_rules.classify(machine(name))][0 if openvino else 1]
    rungs = list(ladders.rungs("seed", machine(name)))
    assert [(r.name, r.recipe) for r in rungs] == [
        ("baseline", "baseline"), ("+system", "system"), ("+framework", framework),
        ("+scheduler", f"{framework},scheduler=dpm++")]
    for rung in rungs[1:]:
        assert recipes.parse(rung.recipe)  # a recipe the runner can take
    assert all("what auto takes at high in one process, not bf16 + compile" in rung.note for rung in rungs[2:])


def test_full_ladder_keeps_a_step_only_when_it_was_faster_and_names_each_rungs_parent():
    def row(seconds, step):
        return {"median_s": seconds, "steps": [{"step": step, "applied": True}]}

    gen = ladders.rungs("full", machine("spr-2s-amx"))
    seen = [next(gen)]
    timings = {"channels_last": 8, "bf16": 7, "compile": 7.5, "openvino": 5, "ipex": None, "scheduler=dpm++": 4,
               "int8": 3.5, "tiny-vae": 3, "lcm-lora": 1, "deepcache=2": 5, "tome": 6}
    rung = gen.send({"median_s": 10, "steps": []})  # baseline
    seen.append(rung)
    rung = gen.send({"median_s": 9, "steps": []})  # +system
    while True:
        seen.append(rung)
        step = rung.name[1:]
        try:
            rung = gen.send(row(timings[step], step) if timings[step] else {"failed": "no ipex"})
        except StopIteration:
            break
    system = "jemalloc,iomp,pin"
    assert [(r.recipe, r.parent) for r in seen] == [
        ("baseline", None), ("system", "baseline"),
        (f"{system},channels_last", "+system"),
        (f"{system},channels_last,bf16", "+channels_last"),
        (f"{system},channels_last,bf16,compile", "+bf16"),  # 7.5 > 7: not kept
        ("iomp,pin,channels_last,openvino", "+bf16"),  # no allocator beside OpenVINO (it aborts), its own bf16
        (f"{system},channels_last,bf16,ipex", "+openvino"),  # replaces openvino, on the fastest eager recipe
        ("iomp,pin,channels_last,openvino,scheduler=dpm++", "+openvino"),
        ("iomp,pin,channels_last,openvino,scheduler=dpm++,int8", "+scheduler=dpm++"),
        ("iomp,pin,channels_last,openvino,scheduler=dpm++,int8,tiny-vae", "+int8"),
        # before the backend, and int8 after it still
        ("iomp,pin,channels_last,scheduler=dpm++,tiny-vae,lcm-lora,openvino,int8", "+tiny-vae"),
        (f"{system},channels_last,bf16,deepcache=2", "+bf16"),  # eager only: on the fastest recipe without a backend
        (f"{system},channels_last,bf16,tome", "+bf16"),
    ]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, sdcpu_home):
    """One bench run for the row, fidelity, report and task tests: img2img at strength 0.5 of 4 steps (2 run) on
    random:tiny, 2 timed runs; baseline, a peer whose environment is missing, channels_last, and tiny-vae (TAESD encodes
    too); the peers run the tasks in their own environments (test_peers, slow)."""
    import os

    out = tmp_path_factory.mktemp("bench")
    protocol = dataclasses.replace(TINY, steps=4, task="img2img", strength=0.5).validate()
    rungs = (ladders.Rung("baseline", "baseline"), ladders.Rung("optimum", "baseline", peer="optimum-intel"),
             ladders.Rung("channels_last", "channels_last"), ladders.Rung("tiny-vae", "tiny-vae"))
    environ = {**os.environ, "SDCPU_OPTIMUM_PYTHON": str(out / "no-such-python")}
    return out, runner.run(protocol, rungs, out, environ)


ROW_FIELDS = {
    "index": int, "rung": str, "recipe": str, "recipe_resolved": str, "protocol": dict, "cpu": dict,
    "versions": dict, "date": str, "matmul_peak_gflop_s": dict, "image": str, "command": str, "verify": dict,
    "steps": list, "load_s": float, "warmup_s": float, "compile_s": float, "prepare_s": float, "times_s": list,
    "mean_s": float, "median_s": float, "min_s": float, "max_s": float, "s_per_step": float, "split": dict,
    "unet_gflops_per_call": float, "unet_gflop_s": float, "peak_rss_gib": float, "random_weights": bool,
    "cfg_batch": int, "threads": int, "cache_before": dict,
}


def test_every_row_field_is_present_and_typed(tiny_run):
    out, rows = tiny_run
    assert [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()] == json.loads(json.dumps(rows))
    for row in (rows[0], rows[2]):
        for name, kind in ROW_FIELDS.items():
            assert isinstance(row[name], kind), (row["rung"], name, row.get(name))
        assert len(row["times_s"]) == 2 and row["min_s"] <= row["median_s"] <= row["max_s"]
        assert row["split"]["unet_calls"] == 3 and row["split"]["unet_s"] > 0  # PNDM: 3 UNet calls for 2 steps run
        assert row["random_weights"] and row["verify"]["failures"] == []
        assert Image.open(out / row["image"]).size == (64, 64)


def test_fidelity_is_against_the_first_rung(tiny_run):
    _, rows = tiny_run
    assert "fidelity" not in rows[0]
    fid = rows[2]["fidelity"]
    assert fid["reference"] == "baseline"
    assert fid["psnr_db"] > 40 and fid["ssim"] > 0.99  # channels_last: the same image, to 8-bit rounding


def test_a_rung_that_cannot_run_is_recorded_and_the_ladder_goes_on(tiny_run):
    _, rows = tiny_run
    assert [row["rung"] for row in rows] == ["baseline", "optimum", "channels_last", "tiny-vae"]
    assert "optimum-intel's environment is not set up" in rows[1]["failed"]
    assert "median_s" in rows[2]


def test_report_from_a_run(tiny_run, tmp_path):
    out, _ = tiny_run
    folder = tmp_path / "copy"
    shutil.copytree(out, folder)
    assert main(["report", str(folder)]) == 0
    text = (folder / "report.md").read_text()
    assert "| 3 | channels_last | `channels_last` |" in text and "optimum-intel's environment is not set up" in text
    assert "Weights are random" in text
    assert "64x64, 4 steps" in text and "warm-up call at 2 steps then 2 timed calls" in text  # img2img: 2 steps run
    assert "(preset `seed`; width, height, steps, runs, warmup-steps from the command line)" in text


def test_report_from_fixture_rows(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "run")
    paths = report.write(tmp_path / "run")
    text = paths[0].read_text()
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| # | rung | recipe | s/image | vs #1 |")
    assert len(lines) == 1 + len(report.load(tmp_path / "run"))
    assert "| 1.00x |" in lines[1] and "reference" in lines[1]
    with Image.open(paths[1]) as chart:
        chart.load()
        assert chart.format == "PNG" and chart.size[0] > 300
    page = paths[2].read_text()
    assert "<img src='ladder.png'>" in page and page.count("<figure>") == sum(
        "median_s" in row for row in report.load(tmp_path / "run"))


def test_a_peers_undivided_time_is_one_whole_pipeline_bar_not_other():
    rows = report.load(FIXTURE)[:2]
    peer = {key: value for key, value in rows[1].items() if key != "split"}  # a peer's row: no component split
    parts = report.chart_parts([rows[0], peer])
    split = rows[0]["split"]
    assert parts[report.WHOLE] == [0.0, peer["median_s"]] and [values[1] for values in parts.values()].count(0.0) == 4
    assert parts["denoiser"][0] == split["unet_s"] and parts[report.WHOLE][0] == 0.0
    assert sum(values[0] for values in parts.values()) == pytest.approx(max(rows[0]["median_s"], sum(
        split[key] for key in ("text_encoder_s", "unet_s", "vae_decode_s"))))  # the bar is the row's time


def test_compare_two_runs(tmp_path, capsys):
    rows = report.load(FIXTURE)
    faster = [dict(row, median_s=row["median_s"] / 2) if "median_s" in row else row for row in rows]
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.jsonl").write_text("".join(json.dumps(row) + "\n" for row in faster))
    assert main(["report", "--compare", str(FIXTURE), str(tmp_path / "b")]) == 0
    table = capsys.readouterr().out
    assert table.startswith(f"- {FIXTURE}: {rows[0]['cpu']['model_name']}, random:tiny 64x64, 2 steps, ")
    assert f"| {rows[0]['rung']} | {rows[0]['median_s']:.2f} | {rows[0]['median_s'] / 2:.2f} | 2.00 |" in table


@pytest.mark.parametrize("args, message", [
    (["--size", "100x64"], "width 100: must be a multiple of 8"),
    (["--runs", "0"], "runs must be at least 1"),
    (["--recipes", "baseline;warp"], "unknown recipe step 'warp'"),
    (["--model", "random:huge"], "unknown random architecture"),
    (["--recipes", "baseline,peer:warp"], "--recipes: unknown peer 'warp'"),
    (["--recipes", "peer:stable-diffusion.cpp:q2_k"], "stable-diffusion.cpp has no variant 'q2_k'; choose from f32, q8_0"),
    (["--strength", "0.5"], "--strength needs --task img2img or inpaint"),
    (["--task", "img2img", "--strength", "1.5"], "strength must be in (0, 1]"),
    (["--task", "img2img", "--strength", "0.1", "--steps", "4"], "4 steps at strength 0.1 run none"),
])
def test_bench_refuses_bad_input_in_one_line(args, message, tmp_path, capsys):
    assert main(["bench", "--model", "random:tiny", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bench_refuses_an_output_that_is_a_file(tmp_path, capsys):
    (tmp_path / "results").write_text("mine")
    assert main(["bench", "--model", "random:tiny", "--out", str(tmp_path / "results")]) == 2
    assert "is a file: give a folder" in capsys.readouterr().err and (tmp_path / "results").read_text() == "mine"


def test_bench_refuses_a_non_empty_output_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["bench", "--model", "random:tiny", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "keep.txt").read_text() == "mine"


def test_report_refuses_a_folder_without_results(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no results.jsonl" in capsys.readouterr().err


def test_an_img2img_bench_times_the_steps_it_runs_on_one_input_for_every_rung(tiny_run):
    out, rows = tiny_run
    base, tiny = rows[0], rows[3]
    assert all(row["inputs"] == base["inputs"] for row in rows)
    assert Path(base["inputs"]["image"]).parent == out / "inputs"
    assert Image.open(base["inputs"]["image"]).size == (64, 64) and base["inputs"]["mask"] is None
    for row in (base, tiny):
        assert row["steps_applied"] == 4 and row["steps_run"] == 2  # int(4 x 0.5)
        assert row["s_per_step"] == pytest.approx(row["median_s"] / 2)
        assert row["split"]["unet_calls"] == 3  # PNDM: one more UNet call than steps run
        assert "Task: img2img, Denoising strength: 0.5" in Image.open(out / row["image"]).info["parameters"]
    assert tiny["fidelity"]["psnr_db"] < 60  # TAESD's decode is not the VAE's (test_algorithms bounds it)
    assert "Task: img2img of the bench's own input image (inputs/) at strength 0.5: 2 steps of 4 run" in \
        " ".join(report.header(rows))


def test_the_bench_inputs_are_the_same_for_a_seed_and_inpainting_masks_the_centre(tmp_path):
    protocol = dataclasses.replace(TINY, task="inpaint").validate()
    first, again = inputs.write(protocol, tmp_path / "a"), inputs.write(protocol, tmp_path / "b")
    assert Path(first["image"]).read_bytes() == Path(again["image"]).read_bytes()
    mask = np.asarray(Image.open(first["mask"]))
    assert mask[32, 32] == 255 and mask[0, 0] == 0 and (mask == 255).mean() == 0.25
    assert (first["strength"], first["steps_run"], first["warmup_steps"]) == (1.0, 2, 1)  # generate's default
    edit = inputs.edit(first)
    assert edit.task == "inpaint" and edit.strength == 1.0 and edit.mask.size == (64, 64)
    assert inputs.write(TINY, tmp_path / "c") == {} and inputs.edit({}) is None


def test_a_childs_peak_rss_is_its_own_not_the_parents_it_was_started_from():
    import subprocess
    import sys

    held = bytearray(600 * 2**20)  # the parent's 600 MiB, touched: a runner that has just built a model
    held[:: 4096] = b"\1" * len(held[:: 4096])
    code = ("import resource; from sdcpu.system import children; "
            "print(children.peak_rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    own, carried = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout.split())
    # Linux carries the parent's peak into ru_maxrss across fork and exec (what the bench read before); VmHWM is the
    # child's own: a Python interpreter importing one small module stays well under 200 MiB
    assert carried >= len(held) > 200 * 2**20 > own > 0
