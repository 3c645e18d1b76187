"""`sdcpu mcp`: sdcpu's images as tools for an agent, over the Model Context Protocol (stdio, the official `mcp` SDK).

Tools: `generate_image` (a prompt, optionally size, steps, guidance, seed, negative prompt, n), `edit_image` (an
image file on this machine, a prompt, optionally a mask file and a strength: img2img, inpainting, or a reference edit
for FLUX.2 klein, with further reference files), and `describe` (the machine, its CPU class, the model served, its
recipe and what `auto` would choose). Images come back as PNG image content, each with its A1111 `parameters` text.

It is `sdcpu serve`'s service without HTTP: the same worker owns one pipeline, loaded, optimized and warmed up on its
thread as the server starts (a tool called before then waits for it), and every request goes through the OpenAI
routes' checks (sdcpu.serve.schemas): a bad argument is a tool error with the same one-line message a 400 carries,
before any compute. Calls are answered one at a time, in order.
"""

import asyncio
import base64
from pathlib import Path

from pydantic import ValidationError

from sdcpu.errors import Skip, UsageError
from sdcpu.pipeline import tasks
from sdcpu.serve import schemas
from sdcpu.serve.calls import Owner
from sdcpu.serve.queue import Phase

CALLER = Owner("mcp")  # the one client of a stdio server
READY_POLL = 0.1  # seconds between looks at the worker while it prepares the pipeline


def server(service, description):
    """The MCP server (mcp.server.mcpserver.MCPServer) of SERVICE (an app.Service whose worker has started);
    DESCRIPTION() -> the text of the `describe` tool."""
    from mcp.server.mcpserver import Image, MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    mcp = MCPServer("sdcpu", instructions="Text-to-image and image editing on this machine's CPU. Images take "
                                          "seconds to minutes each, by model, size and steps.")

    async def run(body: dict, edit=None) -> list:
        try:
            limits = await _limits(service)
            fields = schemas.OpenAIEditForm if edit is not None else schemas.OpenAIImageRequest
            job = schemas.from_openai(fields.model_validate({k: v for k, v in body.items() if v is not None}),
                                      limits, edit)
            images, info = await service.answer(job, service.submit(job, CALLER), None)
        except ValidationError as error:
            raise ToolError(schemas.validation_message(error.errors())) from None
        except (schemas.BadRequest, UsageError, Skip) as error:
            raise ToolError(str(error)) from None
        return [item for image, text in zip(images, info["infotexts"])
                for item in (Image(data=base64.b64decode(image), format="png"), text)]

    @mcp.tool()
    async def generate_image(prompt: str, size: str | None = None, steps: int | None = None,
                             guidance: float | None = None, seed: int | None = None, negative_prompt: str = "",
                             n: int = 1) -> list:
        """Make N images of PROMPT. SIZE is WIDTHxHEIGHT (default: the model's); STEPS and GUIDANCE default to the
        model's and recipe's; SEED makes an image again (default: a random one)."""
        return await run(dict(prompt=prompt, size=size, steps=steps, guidance=guidance, seed=seed,
                              negative_prompt=negative_prompt, n=n))

    @mcp.tool()
    async def edit_image(prompt: str, image_path: str, mask_path: str | None = None, strength: float | None = None,
                         reference_paths: list[str] | None = None, size: str | None = None, steps: int | None = None,
                         seed: int | None = None) -> list:
        """Edit the image at IMAGE_PATH (a file on this machine) as PROMPT says: img2img at STRENGTH (0-1], or
        inpainting where MASK_PATH's transparent pixels are (OpenAI's mask); FLUX.2 klein edits by reference instead,
        with up to 3 more images at REFERENCE_PATHS. SIZE defaults to the image's."""
        try:
            files = [_read(path, "image_path") for path in (image_path, *(reference_paths or ()))]
            mask = _read(mask_path, "mask_path") if mask_path else None
            edit = schemas.openai_edit(files, mask, strength)
        except (schemas.BadRequest, UsageError) as error:
            raise ToolError(str(error)) from None
        return await run(dict(prompt=prompt, size=size, steps=steps, seed=seed, strength=strength), edit)

    @mcp.tool()
    async def describe() -> str:
        """This machine (CPU class, cores, memory), the model served and its recipe, and why."""
        return description()

    return mcp


async def _limits(service):
    """The service's request bounds, once its pipeline is ready (waiting while it prepares); a UsageError where it
    failed."""
    while not service.worker.ready:
        if service.worker.phase is Phase.FAILED:
            raise UsageError(f"the model could not be prepared: {service.worker.state}")
        await asyncio.sleep(READY_POLL)
    return service.limits()


def _read(path: str, name: str) -> bytes:
    """The bytes of the file at PATH, or a one-line UsageError naming NAME; bounded as the servers' uploads are."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"{name} {path}: no such file")
    if file.stat().st_size > tasks.MAX_INPUT_BYTES:
        raise UsageError(f"{name} {path}: more than the {tasks.MAX_INPUT_BYTES // 2**20} MiB accepted")
    return file.read_bytes()
