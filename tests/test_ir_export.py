"""sdcpu.bench.ir_export: the IR both OpenVINO peers read is exported once per model, exporter version and weight
format, and a failed export leaves nothing behind. The exporter here is a script standing in for optimum-cli's
command line (the real export runs in the slow peer tests, test_peers.py)."""

import stat

import pytest

from sdcpu.bench.ir_export import exported

EXPORTER = """#!/bin/sh
[ "$1" = --version ] && { echo "optimum-intel 9.9"; exit 0; }
echo "$@" >> "$(dirname "$0")/calls"
out=$(eval echo \\${$#})
echo '{}' > "$out/model_index.json"
[ -n "$FAIL" ] && { echo "RuntimeError: disk full" >&2; exit 1; }
exit 0
"""


@pytest.fixture
def exporter(tmp_path):
    path = tmp_path / "optimum-cli"
    path.write_text(EXPORTER)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_one_export_per_model_and_format_then_reused(exporter, sdcpu_home, tmp_path):
    folder, cached, _ = exported(str(tmp_path / "model"), str(exporter), "int8")
    assert not cached and (folder / "model_index.json").is_file() and folder.parent == sdcpu_home / "peer-ir"
    assert exported(str(tmp_path / "model"), str(exporter), "int8")[:2] == (folder, True)
    other, cached, _ = exported(str(tmp_path / "model"), str(exporter), "fp32")
    assert other != folder and not cached
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 2 and "--weight-format int8" in calls[0] and "--task text-to-image" in calls[0]


def test_a_failed_export_raises_its_last_line_and_leaves_no_folder(exporter, sdcpu_home, tmp_path, monkeypatch):
    (sdcpu_home / "peer-ir").mkdir(exist_ok=True)
    before = set((sdcpu_home / "peer-ir").iterdir())
    monkeypatch.setenv("FAIL", "1")  # it writes model_index.json, then fails
    with pytest.raises(RuntimeError, match="optimum-cli export failed \\(exit 1\\): RuntimeError: disk full"):
        exported(str(tmp_path / "broken"), str(exporter), "int8")
    assert set((sdcpu_home / "peer-ir").iterdir()) == before  # neither the folder nor its temporary one
    monkeypatch.delenv("FAIL")
    assert not exported(str(tmp_path / "broken"), str(exporter), "int8")[1]  # nothing half-written was taken
