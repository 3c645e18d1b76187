"""The README is tested: its Python blocks run as written, and every command and option it names exists."""

import re
from pathlib import Path

from sdcpu.cli import build_parser

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_the_quick_start_python_block_runs_and_reports_each_step(capsys):
    (block,) = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
    scope = {}
    exec(compile(block, "README.md", "exec"), scope)
    printed = capsys.readouterr().out.splitlines()  # one report line per recipe step, then the image it promises
    assert [line.split(":")[0] for line in printed] == ["channels_last", "bf16"]
    assert scope["image"].size == (64, 64)


def test_every_sdcpu_subcommand_in_the_readme_exists():
    parser = build_parser()
    code = "\n".join(re.findall(r"```\w*\n(.*?)```", README, re.DOTALL))
    named = set(re.findall(r"^sdcpu (\w+)", code, re.MULTILINE)) | set(re.findall(r"`sdcpu (\w+)", README))
    commands = set(parser._subparsers._group_actions[0].choices)
    assert named and named <= commands, named - commands
