import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from images import REMADE_ALONE_LEVELS, level_difference
from sdcpu import batch
from sdcpu.cli import main
from sdcpu.errors import UsageError
from sdcpu.system import locks

SRC = str(Path(__file__).parent.parent / "src")
TINY = ["--model", "random:tiny", "--size", "64x64", "--steps", "2", "--recipe", "baseline"]
ROWS = [{"prompt": f"boat {i}", "seed": 40 + i} for i in range(8)]
ROWS[4] = {"prompt": "a bad one", "size": "60x64"}  # line 5


def write_jobs(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def manifest(folder):
    return batch.read_manifest(folder / batch.MANIFEST)


def test_rows_are_read_with_defaults_and_refused_with_their_line(tmp_path):
    defaults = batch.Job(line=0, prompt="x", size="64x64", seed=3, steps=2)
    jobs_file = tmp_path / "jobs.jsonl"
    jobs_file.write_text('{"prompt": "a", "n": 2, "guidance": 3}\n\n{"prompt": "b", "colour": 1}\nnot json\n'
                         '{"prompt": "c", "steps": 0}\n{"prompt": "d", "scheduler": "nope"}\n[1]\n'
                         '{"prompt": "e", "seed": "7"}\n{"seed": 1}\n{"prompt": "f", "size": "big"}\n')
    jobs, bad, digest = batch.read_jobs(jobs_file, defaults)
    assert jobs == [batch.Job(line=1, prompt="a", size="64x64", seed=3, steps=2, guidance=3.0, n=2)]
    assert jobs[0].seeds() == [3, 4] and len(digest) == 64
    assert [b.line for b in bad] == [3, 4, 5, 6, 7, 8, 9, 10]
    for b, words in zip(bad, ["unknown key(s) 'colour'", "not JSON", "steps must be from 1 to 1000",
                              "unknown scheduler 'nope'", "not a JSON object", "seed: expected a int",
                              "no prompt", "expected WIDTHxHEIGHT"]):
        assert words in b.error, b
    csv_file = tmp_path / "jobs.csv"
    csv_file.write_text('prompt,seed,steps\n"a, with a comma",5,\nb,x,3\n')
    jobs, bad, _ = batch.read_jobs(csv_file, defaults)
    assert jobs == [batch.Job(line=2, prompt="a, with a comma", size="64x64", seed=5, steps=2)]
    assert [(b.line, b.error) for b in bad] == [(3, "seed: expected a int, got 'x'")]
    csv_file.write_text("prompt,colour\na,red\n")
    with pytest.raises(UsageError, match="unknown: colour"):
        batch.read_jobs(csv_file, defaults)
    with pytest.raises(UsageError, match="a jobs file is"):
        batch.read_jobs(tmp_path / "jobs.json", defaults)


def test_a_torn_manifest_line_is_ignored_then_cut_off(tmp_path):
    path = tmp_path / batch.MANIFEST
    path.write_text('{"line": 1, "seed": 0, "file": "L00001-s0.png", "status": "ok"}\n{"line": 2, "se')
    assert [row["line"] for row in batch.read_manifest(path)] == [1]
    with batch.open_manifest(path) as file:
        batch.append(file, {"line": 3, "seed": 0, "file": None, "status": "error"})
        with pytest.raises(UsageError, match="another sdcpu batch is writing there"):
            batch.open_manifest(path)
    assert [row["line"] for row in batch.read_manifest(path)] == [1, 3]
    (tmp_path / "L00001-s0.png").write_bytes(b"")
    jobs = [batch.Job(line=1, prompt="a"), batch.Job(line=3, prompt="c", n=2)]
    assert [(job.line, seed) for job, seed in batch.todo(jobs, batch.read_manifest(path), tmp_path)] == [(3, 0), (3, 1)]


def test_same_shape_images_share_calls_up_to_max_batch():
    jobs = [batch.Job(line=1, prompt="a", n=3), batch.Job(line=2, prompt="b", size="64x64"),
            batch.Job(line=3, prompt="c", scheduler="ddim"), batch.Job(line=4, prompt="d")]
    images = [(job, seed) for job in jobs for seed in job.seeds()]
    shape = lambda job: (job.size, job.steps, job.guidance, job.scheduler)  # noqa: E731
    calls = batch.groups(images, 2, shape)
    assert [[(job.line, seed) for job, seed in call] for call in calls] == [
        [(1, 0), (1, 1)], [(1, 2), (4, 0)], [(2, 0)], [(3, 0)]]


def test_strict_refuses_every_bad_row_before_starting(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", ROWS[:5] + [{"prompt": "x", "steps": -1}])
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), *TINY, "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"sdcpu batch: {jobs}:5: size 60x64: width 60: must be a multiple of 8 from 64 to 4096",
                   f"sdcpu batch: {jobs}:6: steps must be from 1 to 1000, got -1"]
    assert not (tmp_path / "out").exists()


def test_a_bad_row_is_reported_the_rest_runs_and_a_changed_rerun_is_refused(tmp_path, capsys):
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", ROWS), tmp_path / "out"
    assert main(["batch", str(jobs), "--out", str(out), *TINY]) == 1
    assert f"{jobs}:5: size 60x64" in capsys.readouterr().err
    rows = manifest(out)
    assert len(rows) == 8 and sum(r["status"] == "ok" for r in rows) == 7
    (error,) = [r for r in rows if r["status"] == "error"]
    assert error["line"] == 5 and "multiple of 8" in error["error"]
    expected = sorted(batch.image_name(i + 1, 40 + i) for i in range(8) if i != 4)
    assert sorted(p.name for p in out.glob("*.png")) == expected
    params = Image.open(out / "L00001-s40.png").text["parameters"]
    assert params.startswith("boat 0\nSteps: 2, Sampler: pndm, CFG scale: 7.5, Seed: 40, Size: 64x64")
    assert main(["batch", str(jobs), "--out", str(out), *TINY]) == 1  # all made: nothing added
    assert manifest(out) == rows
    # a crash while the last row was written: torn, that image is made again (and a leftover temp file removed)
    text = (out / batch.MANIFEST).read_text()
    (out / batch.MANIFEST).write_text(text[:text.rstrip("\n").rfind("\n") + 1] + text.splitlines()[-1][:20])
    stale = locks.staging(out / "L00002-s41.png", ".png.part", pid=dead_pid())
    stale.write_bytes(b"half an image")
    foreign = [out / "unrelated.png.part", out / ".hidden.png.part", out / ".L00002-s41.png.part"]
    for path in foreign:  # not this batch's staging: a browser's download, another command's
        path.write_bytes(b"someone else's")
    first = (out / "L00001-s40.png").stat().st_mtime_ns
    assert main(["batch", str(jobs), "--out", str(out), *TINY]) == 1
    again = manifest(out)
    assert [(r["line"], r["seed"]) for r in again] == [(r["line"], r["seed"]) for r in rows]
    assert not stale.exists() and (out / "L00001-s40.png").stat().st_mtime_ns == first
    assert all(path.read_bytes() == b"someone else's" for path in foreign)
    assert main(["batch", str(jobs), "--out", str(out), *TINY[:-1], "channels_last"]) == 2
    assert "other options (recipe)" in capsys.readouterr().err
    write_jobs(jobs, ROWS[:3])
    assert main(["batch", str(jobs), "--out", str(out), *TINY]) == 2
    assert "another jobs file" in capsys.readouterr().err
    assert manifest(out) == again


def test_txt_and_csv_jobs_take_the_options_and_batched_calls_give_the_same_images(tmp_path):
    txt = tmp_path / "jobs.txt"
    txt.write_text("a red boat\n\na blue boat\n")
    assert main(["batch", str(txt), "--out", str(tmp_path / "txt"), *TINY, "--seed", "9", "--num-images", "2",
                 "--negative-prompt", "blurry", "--scheduler", "ddim", "--max-batch", "4"]) == 0
    names = sorted(p.name for p in (tmp_path / "txt").glob("*.png"))
    assert names == ["L00001-s10.png", "L00001-s9.png", "L00003-s10.png", "L00003-s9.png"]
    params = Image.open(tmp_path / "txt" / "L00003-s10.png").text["parameters"]
    assert params.startswith("a blue boat\nNegative prompt: blurry\nSteps: 2, Sampler: ddim, CFG scale: 7.5, Seed: 10")
    csv = tmp_path / "jobs.csv"
    csv.write_text("prompt,negative_prompt,seed,scheduler,n\na blue boat,blurry,10,ddim,1\n")
    assert main(["batch", str(csv), "--out", str(tmp_path / "csv"), *TINY]) == 0
    alone = Image.open(tmp_path / "csv" / "L00002-s10.png")
    assert alone.text["parameters"] == params  # the same image, made alone
    batched = Image.open(tmp_path / "txt" / "L00003-s10.png")
    assert level_difference(alone.convert("RGB"), batched.convert("RGB")) <= REMADE_ALONE_LEVELS


def test_a_failed_call_is_an_error_row_and_a_rerun_retries_it(tmp_path, monkeypatch, capsys):
    from sdcpu.pipeline import generate

    run_batch = generate.run_batch

    def failing(pipe, requests, *args):
        if any(r.prompt == "boom" for r in requests):
            raise RuntimeError("boom")
        return run_batch(pipe, requests, *args)

    jobs, out = tmp_path / "jobs.txt", tmp_path / "out"
    jobs.write_text("fine\nboom\n")
    monkeypatch.setattr(generate, "run_batch", failing)
    assert main(["batch", str(jobs), "--out", str(out), *TINY]) == 1
    assert "1 image(s) made, 1 failed, 0 already there" in capsys.readouterr().out
    assert [(r["line"], r["status"], r["error"]) for r in manifest(out)] == [(1, "ok", None),
                                                                             (2, "error", "RuntimeError: boom")]
    monkeypatch.setattr(generate, "run_batch", run_batch)
    assert main(["batch", str(jobs), "--out", str(out), *TINY]) == 0
    assert "1 image(s) made, 0 failed, 1 already there" in capsys.readouterr().out
    assert [(r["line"], r["status"]) for r in manifest(out)] == [(1, "ok"), (2, "error"), (2, "ok")]
    assert sorted(p.name for p in out.glob("*.png")) == ["L00001-s0.png", "L00002-s0.png"]


@pytest.mark.slow  # about 30 s on 2 cores: two processes load the model
def test_killed_after_the_third_image_a_rerun_makes_only_the_rest(tmp_path, sdcpu_home):
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", ROWS), tmp_path / "out"
    env = {**os.environ, "SDCPU_HOME": str(sdcpu_home), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-P", "-m", "sdcpu", "batch", str(jobs), "--out", str(out), *TINY]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while sum(r["status"] == "ok" for r in manifest(out)) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, "it ended before its third image"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    made = {r["file"]: ((out / r["file"]).stat().st_mtime_ns, (out / r["file"]).read_bytes())
            for r in manifest(out) if r["status"] == "ok"}
    assert 3 <= len(made) < 7, "killed mid-way"
    assert subprocess.run(argv, env=env, capture_output=True).returncode == 1
    rows = manifest(out)
    assert len(rows) == 8 and len({(r["line"], r["seed"]) for r in rows}) == 8
    assert len(list(out.glob("*.png"))) == 7 and not list(out.glob(".*.part"))  # the killed run's staging removed
    for name, (mtime, data) in made.items():
        assert ((out / name).stat().st_mtime_ns, (out / name).read_bytes()) == (mtime, data), name


def test_resume_redoes_a_row_whose_file_is_not_its_own_name(tmp_path, capsys):
    jobs, out = tmp_path / "jobs.txt", tmp_path / "a" / "out"
    jobs.write_text("one\ntwo\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hostname").write_text("not an image of this batch")
    assert main(["batch", str(jobs), "--out", str(out), *TINY]) == 0
    (out / "L00002-s0.png").unlink()
    with open(out / batch.MANIFEST, "a") as file:  # a tampered row pointing at a file that exists elsewhere
        file.write(json.dumps({"line": 2, "seed": 0, "file": "../../etc/hostname", "status": "ok"}) + "\n")
    capsys.readouterr()
    assert main(["batch", str(jobs), "--out", str(out), *TINY]) == 0
    assert "1 image(s) made, 0 failed, 1 already there" in capsys.readouterr().out
    assert (out / "L00002-s0.png").exists()


@pytest.mark.parametrize("line", ["not json", '{"line": 1, "seed": 0, "file": "L00001-s0.png"}',
                                  '{"line": 1, "seed": 0, "file": null, "status": "ok"}', "[1]"])
def test_a_malformed_manifest_row_is_one_line_naming_it_and_nothing_is_lost(tmp_path, capsys, line):
    jobs, out = tmp_path / "jobs.txt", tmp_path / "out"
    jobs.write_text("one\n")
    assert main(["batch", str(jobs), "--out", str(out), *TINY]) == 0
    with open(out / batch.MANIFEST, "a") as file:
        file.write(line + "\n")
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    capsys.readouterr()
    assert main(["batch", str(jobs), "--out", str(out), *TINY]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert f"{out / batch.MANIFEST}:2: " in err
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


@pytest.mark.parametrize("text", ['{"jobs_sha256": "ab', "[]", '{"options": {}}'])
def test_a_malformed_batch_json_is_one_line_naming_it(tmp_path, capsys, text):
    jobs, out = tmp_path / "jobs.txt", tmp_path / "out"
    jobs.write_text("one\n")
    out.mkdir()
    (out / batch.STATE).write_text(text)
    assert main(["batch", str(jobs), "--out", str(out), *TINY]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert f"{out / batch.STATE}: not a batch.json sdcpu wrote" in err
    assert (out / batch.STATE).read_text() == text


def test_a_csv_field_over_the_limit_is_one_line(tmp_path, capsys):
    jobs = tmp_path / "jobs.csv"
    jobs.write_text('prompt\nfine\n"' + "x" * (128 * 1024 + 1) + '"\n')
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), *TINY]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert f"{jobs}:3: field larger than field limit" in err


def test_a_prompt_longer_than_the_text_encoder_reads_is_an_error_row_and_never_run(tmp_path, monkeypatch, capsys):
    from sdcpu.pipeline import generate

    run_batch = generate.run_batch

    def checked(pipe, requests, *args):
        assert all(len(r.prompt.split()) < 70 for r in requests), "a refused prompt ran"
        return run_batch(pipe, requests, *args)

    monkeypatch.setattr(generate, "run_batch", checked)
    jobs, out = tmp_path / "jobs.txt", tmp_path / "out"
    jobs.write_text("fine\n" + "boat " * 76 + "\n")  # 78 tokens, start and end included
    assert main(["batch", str(jobs), "--out", str(out), *TINY, "--max-batch", "2"]) == 1
    assert "1 image(s) made, 1 failed" in capsys.readouterr().out
    assert [(r["line"], r["status"], r["error"]) for r in manifest(out)] == [
        (2, "error", "the prompt is 78 tokens; the text encoder reads 77 (start and end included): shorten it"),
        (1, "ok", None)]
    assert sorted(p.name for p in out.glob("*.png")) == ["L00001-s0.png"]
