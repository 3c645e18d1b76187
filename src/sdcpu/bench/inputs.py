"""The input image (and mask) of an img2img or inpainting bench: made here, the same for every rung and every peer.

A smooth synthetic picture (gradients and a few discs, from the protocol's seed) rather than a user's photo: the compute
of a call does not depend on the pixels, and every rung of a run, sdcpu's or a peer's, reads the same two files. The
mask is a centred rectangle of half the width and height (a quarter of the image repainted), white = repaint.
"""

import random
from pathlib import Path


def write(protocol, folder: Path) -> dict:
    """Write PROTOCOL's inputs under FOLDER: {"image": path, "mask": path or None}; {} for text-to-image."""
    if protocol.task == "txt2img":
        return {}
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    width, height = protocol.width, protocol.height
    image = Image.linear_gradient("L").resize((width, height))
    image = Image.merge("RGB", (image, image.rotate(90), image.rotate(180)))
    draw = ImageDraw.Draw(image)
    rng = random.Random(protocol.seed)
    for _ in range(6):
        x, y, r = rng.randrange(width), rng.randrange(height), rng.randrange(8, max(9, min(width, height) // 4))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    paths = {"image": str(folder / "image.png"), "mask": None}
    image.save(paths["image"])
    if protocol.task == "inpaint":
        mask = Image.new("L", (width, height), 0)
        ImageDraw.Draw(mask).rectangle((width // 4, height // 4, width * 3 // 4 - 1, height * 3 // 4 - 1), fill=255)
        paths["mask"] = str(folder / "mask.png")
        mask.save(paths["mask"])
    return paths


def edit(protocol, paths: dict):
    """The tasks.Edit of PATHS (what write made) at the protocol's strength; None for text-to-image."""
    if not paths:
        return None
    from sdcpu import tasks

    data = {name: Path(path).read_bytes() for name, path in paths.items() if path}
    return tasks.edit(data["image"], data.get("mask"), protocol.strength_used)
