"""The input image (and mask) of an img2img or inpainting bench: made here, the same for every rung and every peer.

A smooth synthetic picture (gradients and a few discs, from the protocol's seed) rather than a user's photo: the compute
of a call does not depend on the pixels, and every rung of a run, sdcpu's or a peer's, reads the same two files. The
mask is a centred rectangle of half the width and height (a quarter of the image repainted), white = repaint.
"""

import random
from pathlib import Path


def write(protocol, folder: Path) -> dict:
    """Write PROTOCOL's inputs under FOLDER; what every child reads of the task, sdcpu's or a peer's without sdcpu's
    modules: {"task", "image": path, "mask": path or None, "strength", "warmup_steps" (what the warm-up call asks),
    "steps_run", "warmup_steps_run" (the denoising steps a timed call and the warm-up run)}; {} for text-to-image."""
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
    warmup = protocol.warmup_steps_used
    paths = {"task": protocol.task, "image": str(folder / "image.png"), "mask": None,
             "strength": protocol.strength_used, "warmup_steps": warmup, "steps_run": protocol.steps_run,
             "warmup_steps_run": protocol.run_count(warmup)}
    image.save(paths["image"])
    if protocol.task == "inpaint":
        mask = Image.new("L", (width, height), 0)
        ImageDraw.Draw(mask).rectangle((width // 4, height // 4, width * 3 // 4 - 1, height * 3 // 4 - 1), fill=255)
        paths["mask"] = str(folder / "mask.png")
        mask.save(paths["mask"])
    return paths


def edit(written: dict):
    """The tasks.Edit of what write returned; None for text-to-image."""
    if not written:
        return None
    from sdcpu.pipeline import tasks

    mask = Path(written["mask"]).read_bytes() if written["mask"] else None
    return tasks.edit(Path(written["image"]).read_bytes(), mask, written["strength"])
