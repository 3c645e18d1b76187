"""`sdcpu batch --ray` on a real local Ray cluster (2 CPUs) that this module starts once and stops at its end."""

import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
from PIL import Image

from images import REMADE_ALONE_LEVELS, level_difference
from raycluster import MARK, local_cluster
from machines import machine
from sdcpu import batch, recipes
from sdcpu.batch import on_ray
from sdcpu.cli import main
from sdcpu.commands import batch as commands_batch
from sdcpu.system import ray_shares
from test_batch import ROWS, SRC, TINY, manifest, write_jobs


@pytest.fixture(scope="module")
def cluster():
    with local_cluster() as address_and_mark:
        yield address_and_mark


def actor_pids(token: str) -> list[int]:
    """The pids of this module's cluster's Ray Data actors (their process title names the map worker)."""
    pids = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if "MapWorker" in " ".join(process.info["cmdline"] or ()) and process.environ().get(MARK) == token:
                pids.append(process.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def test_two_actors_make_the_files_and_rows_of_one_process(cluster, tmp_path, capsys):
    address, _ = cluster
    jobs = write_jobs(tmp_path / "jobs.jsonl", [ROWS[0], ROWS[1], ROWS[4]])  # line 3 is bad
    assert main(["batch", str(jobs), "--out", str(tmp_path / "one"), *TINY]) == 1
    assert main(["batch", str(jobs), "--out", str(tmp_path / "ray"), *TINY, "--ray", address, "--actors", "2",
                 "--cores-per-actor", "1"]) == 1
    assert "2 CPUs: 2 actor(s) x 1 core(s)" in capsys.readouterr().out

    def rows(folder):
        return sorted((r["line"], r["seed"], r["file"], r["recipe"], r["status"], r["error"]) for r in manifest(folder))

    assert rows(tmp_path / "ray") == rows(tmp_path / "one") and len(rows(tmp_path / "one")) == 3
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == names
    for name in (n for n in names if n.endswith(".png")):
        one, on_ray = Image.open(tmp_path / "one" / name), Image.open(tmp_path / "ray" / name)
        assert on_ray.text == one.text, name
        # 1 thread an actor against 2 in the process: the sums split differently, fp32 rounding as across batch
        # sizes (images.py), far below the 46 levels between two seeds' images
        assert level_difference(one.convert("RGB"), on_ray.convert("RGB")) <= REMADE_ALONE_LEVELS, name


@pytest.mark.slow  # a minute on 2 cores: 16 images, and the killed actor loads its model again
def test_an_actor_killed_mid_job_loses_and_duplicates_nothing(cluster, tmp_path):
    address, token = cluster
    rows = [{"prompt": f"boat {i}", "seed": i, "n": 2} for i in range(0, 16, 2)]  # 16 images
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", rows), tmp_path / "out"
    killed = []

    def kill_one_after_the_first_image():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            pids = actor_pids(token)
            if pids and list(out.glob("*.png")):
                os.kill(pids[0], signal.SIGKILL)
                killed.append((pids[0], len(list(out.glob("*.png")))))
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_after_the_first_image)
    killer.start()
    slower = ["--model", "random:tiny", "--size", "64x64", "--steps", "8", "--recipe", "baseline"]  # time to kill
    code = main(["batch", str(jobs), "--out", str(out), *slower, "--ray", address])
    killer.join()
    assert killed and killed[0][1] < 16, "no actor was killed mid-job"
    assert code == 0
    made = manifest(out)
    assert len(made) == 16 and {r["status"] for r in made} == {"ok"}
    assert len({(r["line"], r["seed"]) for r in made}) == 16
    assert len(list(out.glob("*.png"))) == 16 and not list(out.glob("*.part"))


def test_the_pool_must_fit_the_cluster_and_the_ray_options_need_ray(cluster, tmp_path, capsys):
    address, _ = cluster
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", ROWS[:1]), tmp_path / "out"
    assert main(["batch", str(jobs), "--out", str(out), *TINY, "--ray", address, "--actors", "3"]) == 2
    assert f"3 actor(s) x 1 core(s) need 3 CPUs; the Ray cluster at {address} has 2" in capsys.readouterr().err
    for options, message in [(["--actors", "2"], "--actors: only with --ray"),
                             (["--cores-per-actor", "1", "--actors", "1"], "--actors, --cores-per-actor: only with"),
                             (["--ray", "--cores-per-actor", "0"], "--cores-per-actor must be at least 1, got 0")]:
        assert main(["batch", str(jobs), "--out", str(out), *TINY, *options]) == 2
        assert message in capsys.readouterr().err
    assert manifest(out) == []


def test_a_row_brought_again_by_a_retried_batch_is_written_once(tmp_path):
    rows = [batch.row(1, 0, "baseline", file="a.png", seconds=1.0), batch.row(2, 0, "baseline", error="boom"),
            batch.row(1, 0, "baseline", file="a.png", seconds=2.0)]
    with batch.open_manifest(tmp_path / batch.MANIFEST) as file:
        assert commands_batch._record(iter(rows), file, total=3, left=2) == 1  # one failed
    assert manifest(tmp_path) == rows[:2]


def test_shares_of_a_node_are_claimed_once_each_and_freed_with_their_holder(tmp_path):
    cpu = machine("spr-2s-amx")
    cores, half = cpu.usable_physical_cores, len(cpu.usable_physical_cores) // 2
    first, second = ray_shares.claim(cpu, half, tmp_path), ray_shares.claim(cpu, half, tmp_path)
    assert (first[1], second[1]) == (cores[:half], cores[half:2 * half])
    assert ray_shares.claim(cpu, half, tmp_path) is None  # both taken: that actor runs unpinned
    first[0].close()  # its holder died: the kernel frees the lock
    assert ray_shares.claim(cpu, half, tmp_path)[1] == cores[:half]


def test_without_ray_the_error_names_the_install_command(tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", ROWS[:1])
    hide = ("import sys; sys.modules['ray'] = None; from sdcpu.cli import main; "
            f"sys.exit(main({['batch', str(jobs), '--out', str(tmp_path / 'out'), *TINY, '--ray']!r}))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", hide], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("sdcpu batch: error: --ray needs Ray")
    assert done.stderr.rstrip().endswith(": pip install -e '.[ray]'")
    assert not (tmp_path / "out").exists()


def test_an_actor_runs_its_cores_threads_even_where_the_driver_has_fewer_cpus():
    """On a cluster the driver (here a canned 2-CPU machine) makes the actors' environment for nodes that may have
    more CPUs: 8 threads per actor is their share there, not refused as more than the driver's CPUs."""
    environ = on_ray.actor_environ(recipes.parse("openvino=f32"), machine("epyc-2core-avx2"), 8)
    assert environ["OMP_NUM_THREADS"] == "8"


@pytest.mark.parametrize("plant", ["writable by others", "a link"])
def test_a_shares_folder_others_could_have_planted_is_refused(tmp_path, plant):
    """/tmp is shared: a folder of the shares' name another user made first (or a link to theirs) would let them hold
    or plant the locks; it is refused with the reason, as SDCPU_HOME is."""
    from sdcpu.errors import UsageError

    folder = tmp_path / "shares"
    if plant == "a link":
        (tmp_path / "theirs").mkdir()
        folder.symlink_to(tmp_path / "theirs")
    else:
        folder.mkdir()
        folder.chmod(0o777)
    with pytest.raises(UsageError, match="is not a folder|is writable by others"):
        ray_shares.claim(machine("spr-2s-amx"), 1, folder)


def test_ray_auto_without_a_cluster_is_one_line(tmp_path, monkeypatch, capsys):
    """Ray's own refusal when `auto` finds no cluster, made here: whether one is found depends on what else runs on the
    machine (this module's cluster, another test run's: Ray finds any by its processes)."""
    import ray

    def no_cluster(**_):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to by "
                              "setting `--address` flag or `RAY_ADDRESS` environment variable.")

    monkeypatch.setattr(ray, "init", no_cluster)
    jobs = write_jobs(tmp_path / "jobs.jsonl", ROWS[:1])
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), *TINY, "--ray=auto"]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "--ray auto: Could not find any running Ray instance" in err
