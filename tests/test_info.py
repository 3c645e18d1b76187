import json

import pytest

from sdcpu import recipes
from sdcpu.cli import COMMANDS, main
from sdcpu.commands.info import ARM_FLAGS, X86_FLAGS


def test_info_json_names_versions_isa_and_torch(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["versions"]["torch"].startswith("2.13.0")
    expected = X86_FLAGS if info["cpu"]["arch"] == "x86_64" else ARM_FLAGS
    assert list(info["isa"]) == list(expected) and all(isinstance(v, bool) for v in info["isa"].values())
    assert info["torch"]["num_threads"] >= 1 and info["torch"]["cpu_capability"]
    assert info["bf16"]["native"] == any(info["isa"].get(f) for f in ("amx_bf16", "avx512_bf16", "bf16"))
    assert info["cpu"]["physical_cores"] >= 1
    # what auto takes on each class is tests/test_auto.py's, on every canned machine; here: it is a recipe, with reasons
    assert recipes.parse(info["auto"]["recipe"]) and info["auto"]["reasons"]


def test_info_table_has_one_row_per_topic(capsys):
    assert main(["info"]) == 0
    table, auto_section = capsys.readouterr().out.split("\n\n", 1)
    assert [line.split()[0] for line in table.splitlines()] == ["versions", "cpu", "cores", "usable", "memory", "isa", "torch", "bf16"]
    assert auto_section.startswith("auto recipe: ") and "channels_last" in auto_section  # said why not
    assert "OMP_NUM_THREADS=" in auto_section  # the launch plan auto applies, as a shell line


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_prints_its_help(command, capsys):
    """argparse formats a help string with %: a literal one must be doubled (serve's --max-memory printed "75% of",
    and `sdcpu serve --help` died with "TypeError: %o format")."""
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert f"usage: sdcpu {command}" in capsys.readouterr().out
