"""What the ControlNet tests share: a request and a control image."""

import io

import numpy as np
from PIL import Image

from sdcpu.pipeline import generate

REQUEST = generate.Request("a house", steps=3, width=64, height=64, seed=5, guidance=5.0)


def square(size: int = 64, inside: int = 255, outside: int = 0) -> Image.Image:
    """A bright square on a dark ground, its sides at 16 and 47."""
    pixels = np.full((size, size), outside, np.uint8)
    pixels[16:48, 16:48] = inside
    return Image.fromarray(pixels).convert("RGB")


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()

