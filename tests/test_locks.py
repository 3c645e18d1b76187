"""Staging names and their cleanup: what a killed conversion (.unet.PID.xml/.bin) leaves is removed, nothing else."""

import os
import subprocess

from sdcpu.system import locks


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_remove_stale_takes_only_the_staging_of_dead_processes(tmp_path):
    artifact, dead, alive = tmp_path / "unet.xml", dead_pid(), os.getppid()
    assert locks.staging(artifact, ".xml", dead) == tmp_path / f".unet.{dead}.xml"
    stale = [tmp_path / f".unet.{dead}.xml", tmp_path / f".unet.{dead}.bin", tmp_path / f".unet.{dead}.calibration"]
    kept = [tmp_path / f".unet.{alive}.xml", tmp_path / ".unet.xml.lock", tmp_path / f".vae.{dead}.xml",
            tmp_path / f".unet_x.{dead}.xml", tmp_path / "unet.bin"]
    stale[2].mkdir()
    (stale[2] / "samples.npz").write_bytes(b"")
    for path in [*stale[:2], *kept]:
        path.write_bytes(b"")
    assert sorted(locks.remove_stale(artifact)) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_write_text_leaves_the_whole_file_and_no_staging(tmp_path):
    path = tmp_path / "profile.json"
    with locks.exclusive(path):
        locks.write_text(path, "{}\n")
    assert path.read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".profile.json.lock", "profile.json"]

