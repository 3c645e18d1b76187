"""`sdcpu mcp` through the official MCP SDK's own client: a real stdio server process on random:tiny, its tools listed
and called, images back as PNG content, bad arguments as one-line tool errors."""

import asyncio
import base64
import io
import os
import sys

import pytest
from PIL import Image

pytest.importorskip("mcp")
from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402


def session_calls(home, calls: list[tuple[str, dict]]) -> tuple[list[str], list]:
    """The tools `sdcpu mcp` lists, and its result for each (tool, arguments) of CALLS, in one server process."""

    async def run():
        params = StdioServerParameters(command=sys.executable, args=["-m", "sdcpu", "mcp", "--model", "random:tiny",
                                                                     "--recipe", "baseline", "--warmup-size",
                                                                     "64x64"],
                                       env={**os.environ, "SDCPU_HOME": str(home)})
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            tools = sorted(tool.name for tool in (await session.list_tools()).tools)
            return tools, [await session.call_tool(name, arguments) for name, arguments in calls]

    return asyncio.run(asyncio.wait_for(run(), timeout=300))


def png(block) -> Image.Image:
    assert block.type == "image" and block.mime_type == "image/png"
    return Image.open(io.BytesIO(base64.b64decode(block.data)))


def text(result) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


@pytest.fixture(scope="module")
def answers(sdcpu_home, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mcp-inputs")
    Image.effect_noise((64, 64), 60).convert("RGB").save(folder / "in.png")
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 64))  # OpenAI's mask: transparent where the image is edited
    mask.save(folder / "mask.png")
    calls = [
        ("generate_image", {"prompt": "a red boat", "size": "64x64", "steps": 2, "seed": 7}),
        ("generate_image", {"prompt": "a red boat", "size": "65x64", "steps": 2}),
        ("generate_image", {"prompt": "a red boat", "steps": 0}),
        ("edit_image", {"prompt": "a blue boat", "image_path": str(folder / "in.png"), "strength": 0.5, "steps": 4,
                        "seed": 1}),
        ("edit_image", {"prompt": "a blue boat", "image_path": str(folder / "in.png"),
                        "mask_path": str(folder / "mask.png"), "steps": 2}),
        ("edit_image", {"prompt": "x", "image_path": str(folder / "missing.png")}),
        ("describe", {}),
    ]
    tools, results = session_calls(sdcpu_home, calls)
    return tools, dict(zip(["made", "bad_size", "bad_steps", "img2img", "inpaint", "missing", "describe"], results))


def test_the_tools_are_listed(answers):
    tools, _ = answers
    assert tools == ["describe", "edit_image", "generate_image"]


def test_generate_image_answers_a_png_and_its_parameters(answers):
    made = answers[1]["made"]
    assert not made.is_error
    assert png(made.content[0]).size == (64, 64)
    assert "Seed: 7" in text(made) and "Size: 64x64" in text(made) and "weights are random" in text(made)


def test_bad_arguments_are_one_line_tool_errors_before_any_compute(answers):
    results = answers[1]
    for name, message in (("bad_size", "size 65x64: width 65: must be a multiple of 8"),
                          ("bad_steps", "steps: Input should be greater than or equal to 1"),
                          ("missing", "image_path ")):
        result = results[name]
        assert result.is_error and message in text(result) and "\n" not in text(result), (name, text(result))
    assert "no such file" in text(results["missing"])


def test_edit_image_runs_img2img_and_inpainting_on_files_of_this_machine(answers):
    results = answers[1]
    for name, task in (("img2img", "Task: img2img"), ("inpaint", "Task: inpaint")):
        assert not results[name].is_error, text(results[name])
        assert png(results[name].content[0]).size == (64, 64) and task in text(results[name])


def test_describe_names_the_class_the_model_and_the_recipe(answers):
    from sdcpu.recipes import auto_rules

    described = text(answers[1]["describe"])
    assert any(f"class {name}: " in described for name in auto_rules.CLASSES)  # whichever this machine's is
    assert "model: random:tiny" in described and "recipe: baseline" in described and "state: ready" in described


@pytest.mark.parametrize("args, message", [
    (["--max-size", "10"], "--max-size must be at least 64, got 10"),
    (["--warmup-size", "65x64"], "width 65: must be a multiple of 8"),
    (["--model", "random:sd99"], "unknown random architecture"),
])
def test_bad_options_are_one_line_and_exit_2_before_loading(capsys, args, message):
    from sdcpu.cli import main

    assert main(["mcp", "--model", "random:tiny", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
