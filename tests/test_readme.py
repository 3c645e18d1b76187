"""The README is tested: its Python blocks run as written, and every command and option it names exists."""

import re
from pathlib import Path

import pytest

from sdcpu.cli import build_parser

README = (Path(__file__).parent.parent / "README.md").read_text()


@pytest.mark.parametrize("block", re.findall(r"```python\n(.*?)```", README, re.DOTALL))
def test_python_blocks_run(block):
    exec(compile(block, "README.md", "exec"), {})


def test_every_sdcpu_subcommand_in_the_readme_exists():
    parser = build_parser()
    code = "\n".join(re.findall(r"```\w*\n(.*?)```", README, re.DOTALL))
    named = set(re.findall(r"^sdcpu (\w+)", code, re.MULTILINE)) | set(re.findall(r"`sdcpu (\w+)", README))
    commands = set(parser._subparsers._group_actions[0].choices)
    assert named and named <= commands, named - commands
