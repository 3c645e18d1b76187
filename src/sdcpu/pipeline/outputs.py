"""The images a generation writes: PNGs that describe themselves (AUTOMATIC1111's `parameters` text, sdcpu's
fields), named or numbered in an output folder, each written whole or not at all."""

import io
import os
import re
from pathlib import Path

from sdcpu.errors import UsageError
from sdcpu.pipeline.generate import RANDOM_WEIGHTS_NOTE, Request
from sdcpu.system import locks


def parameters_text(request: Request, seed: int, *, model: str, random_weights: bool, scheduler: str, recipe: str,
                    edit=None, loras=(), hires=None, control=None) -> str:
    """AUTOMATIC1111's `parameters` layout, which image viewers and web UIs already read, plus sdcpu's fields (the
    task, and for img2img and inpainting A1111's `Denoising strength` and the input image's SHA-256). LORAS (each
    with name, weight, digest()) go as A1111 writes them: `<lora:name:weight>` tags after the prompt and
    `Lora hashes`. HIRES (a hires fix's second pass): A1111's Hires fields after the first pass's Size. CONTROL:
    A1111's ControlNet extension's `ControlNet 0` field."""
    lines = [_one_line(request.prompt) + "".join(f" <lora:{lora.name}:{lora.weight:g}>" for lora in loras)]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {_one_line(request.negative_prompt)}")
    lines.append(
        f"Steps: {request.steps}, Sampler: {scheduler}, CFG scale: {request.guidance}, Seed: {seed}, "
        f"Size: {request.width}x{request.height}, "
        + (f"{hires.text(request.width, request.steps)}, " if hires else "")
        + f"Model: {model}, Recipe: {recipe}"
        + (f", Task: {edit.task}, " + (f"Reference images: {1 + len(edit.references)}" if edit.by_reference
                                         else f"Denoising strength: {edit.strength}")
           + f", Init image hash: {edit.image_sha256}" if edit else "")
        + (f', Lora hashes: "{", ".join(f"{lora.name}: {lora.digest()}" for lora in loras)}"' if loras else "")
        + (f', ControlNet 0: "{control.text()}"' if control else "")
    )
    if random_weights:
        lines.append(f"Note: {RANDOM_WEIGHTS_NOTE}")
    return "\n".join(lines)


def _one_line(text: str) -> str:
    """TEXT with its line breaks as spaces (the same CLIP tokens), so a prompt cannot forge a line of `parameters`."""
    return " ".join(text.splitlines())


NUMBERED = re.compile(r"(\d{5,})-(\d+)\.png")  # a file generate numbers in an output folder: NUMBER-SEED.png


def numbered(output: str) -> bool:
    """Whether OUTPUT is a folder, whose images are numbered after those already there (else a FILE.png)."""
    return Path(output).suffix.lower() != ".png"


def output_paths(output: str, seeds: list[int], overwrite: bool = False) -> list[Path]:
    """Where the images of SEEDS go: OUTPUT itself if it names a .png (numbered when several; refused where one exists,
    unless OVERWRITE), else new numbered files in it (save_png takes the next number where one is taken meanwhile)."""
    target = Path(output).expanduser()
    if not numbered(output):
        folder = target.parent
        names = [target.name] if len(seeds) == 1 else [f"{target.stem}-{seed}.png" for seed in seeds]
        existing = [name for name in names if (folder / name).exists()]
        if existing and not overwrite:
            raise UsageError(f"{folder / existing[0]} exists: pass --overwrite to replace it")
    else:
        folder = target
        first = _next_number(folder) if folder.is_dir() else 0
        names = [f"{first + i:05d}-{seed}.png" for i, seed in enumerate(seeds)]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create output folder {folder}: {err.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise UsageError(f"output folder {folder} is not writable")
    return [folder / name for name in names]


def _next_number(folder: Path) -> int:
    taken = [int(match[1]) for path in folder.glob("[0-9]*-*.png") if (match := NUMBERED.fullmatch(path.name))]
    return max(taken, default=-1) + 1


def encode_png(image, parameters: str) -> bytes:
    """IMAGE as PNG bytes with a `parameters` text chunk."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def save_png(image, path: Path, parameters: str, *, overwrite: bool = True, renumber: bool = False) -> Path:
    """Write IMAGE with a `parameters` text chunk to this process's staging file (made as open() makes a file: mode
    0666 less the umask), then put it at PATH (never half-written); the path written. OVERWRITE False: PATH is claimed
    exclusively (a hard link), refused where a file is already there; RENUMBER (PATH is NUMBER-SEED.png in an output
    folder): the next free number is taken instead, so two commands writing into one folder never overwrite each
    other's images."""
    tmp = locks.staging(path, ".png.part")
    try:
        tmp.unlink(missing_ok=True)  # a killed process with this pid may have left it linked to its image: not into it
        with open(tmp, "xb") as out:
            out.write(encode_png(image, parameters))
        if overwrite and not renumber:
            os.replace(tmp, path)
            return path
        while True:
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                if not renumber:
                    raise UsageError(f"{path} exists (written since this command started): pass --overwrite to "
                                     "replace it") from None
                path = path.with_name(f"{_next_number(path.parent):05d}-{NUMBERED.fullmatch(path.name)[2]}.png")
    finally:
        tmp.unlink(missing_ok=True)  # linked or refused: the temporary name goes
