"""The promise "image i of a batch can be remade alone from its seed", as the tests check it.

A batch of N runs the UNet and the VAE on N images at once, and the kernels for a larger batch may split and round
their sums differently (on AVX2, oneDNN's batched convolutions do): the same seed gives the same image up to float
rounding, not the same bytes. fp32 rounding differences (~1e-6 of full scale per op) stay far below one 8-bit level
through a few denoising steps; REMADE_ALONE_LEVELS allows two levels of 255 at any pixel, while another seed's image
differs by 46 levels on average and 233 at most (random:tiny, 64x48, 2 steps: measured), so a mix-up of seeds or
prompts still fails.
"""

import io
import struct
import zlib

import numpy as np
from PIL import Image

REMADE_ALONE_LEVELS = 2


def level_difference(a: Image.Image, b: Image.Image) -> int:
    """The largest difference of one channel at one pixel, in 8-bit levels."""
    assert a.size == b.size and a.mode == b.mode
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def noise_png(seed: int, size: tuple[int, int]) -> bytes:
    """A PNG of SIZE (width, height) of random RGB pixels drawn from SEED."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims WIDTHxHEIGHT RGB pixels and holds none: a decoder that trusts it would allocate them."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
