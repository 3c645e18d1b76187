"""The tiled VAE: an image larger than a tile is decoded (and encoded) a tile at a time, so its memory is one tile's
whatever the image's size.

A VAE's decoder runs convolutions at the full resolution with 128-512 channels: its activations grow with the image's
area (SDXL's VAE decoding one 2048x2048 image peaked at 15.6 GiB: BENCHMARKS.md), and that is where large images run
out of memory. Here `tiled(vae)` replaces the VAE instance's `decode` and `encode` for a call (torch's AutoencoderKL,
FLUX.2's AutoencoderKLFlux2, the OpenVINO stand-in alike) with calls that split an input with a side over
$SDCPU_VAE_TILE pixels (default 1024; 0: never) into tiles of that side overlapping by a quarter, run the VAE's own
call on each and blend the overlaps: every output pixel is the average of the tiles covering it weighted by a window
that falls linearly to the tile's edges, so no seam is a step. An input within one tile runs whole, as before: the
images of every size up to the tile are unchanged. On OpenVINO every tile has one static shape: one compile.

The tiles are not the whole image's decode: the decoder's group norms see one tile's statistics, so colours may
drift between far-apart tiles (the PSNR against a whole decode is in BENCHMARKS.md). Encoding blends the latent
distribution's moments the same way (img2img, inpainting and reference edits of large images).
"""

import contextlib
import os

import torch

from sdcpu.errors import UsageError

VARIABLE, DEFAULT = "SDCPU_VAE_TILE", 1024
MULTIPLE = 64  # a tile's side, in pixels: a whole number of latents for every VAE factor (8) and patch (2x2)


def tile_pixels() -> int:
    """The tile side in pixels ($SDCPU_VAE_TILE, default 1024; 0: never tile), or a one-line UsageError."""
    text = os.environ.get(VARIABLE, str(DEFAULT))
    if not (text.isascii() and text.isdigit()) or (int(text) and (int(text) < 2 * MULTIPLE or int(text) % MULTIPLE)):
        raise UsageError(f"{VARIABLE}={text!r}: a tile side in pixels, a multiple of {MULTIPLE} from {2 * MULTIPLE} "
                         "(0: never tile)")
    return int(text)


@contextlib.contextmanager
def tiled(vae, tile: int | None = None):
    """Within it, VAE's decode and encode run in tiles of TILE pixels (default: tile_pixels(); 0: whole) where an
    input is larger than one, each tile by the VAE's own call (an instance's own, a compiled decode, where it holds
    one, else its class's), which is put back after."""
    tile = tile_pixels() if tile is None else tile
    # TAESD (AutoencoderTiny) encodes to latents, not a distribution: its encode stays whole
    names = ("decode",) if type(vae).__name__ == "AutoencoderTiny" else ("decode", "encode")
    held = {name: vars(vae)[name] for name in names if name in vars(vae)}
    whole = {name: held.get(name) or getattr(vae, name) for name in names}
    factor = 2 ** (len(vae.config.block_out_channels) - 1)  # pixels a latent covers a side, as the pipelines say

    def decode(latents, *args, return_dict=True, **kwargs):
        from diffusers.models.autoencoders.vae import DecoderOutput

        image = blend(lambda part: whole["decode"](part, *args, return_dict=False, **kwargs)[0], latents,
                      tile // factor, factor)
        return DecoderOutput(sample=image) if return_dict else (image,)

    def encode(images, return_dict=True):
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        if max(images.shape[-2:]) <= tile:
            return whole["encode"](images, return_dict=return_dict)
        moments = blend(lambda part: whole["encode"](part).latent_dist.parameters, images, tile, 1 / factor)
        distribution = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=distribution) if return_dict else (distribution,)

    tiles = {"decode": decode, "encode": encode}
    for name in names if tile else ():
        setattr(vae, name, tiles[name])
    try:
        yield vae
    finally:
        for name in names if tile else ():
            delattr(vae, name)
            if name in held:
                setattr(vae, name, held[name])


def starts(size: int, tile: int) -> list[int]:
    """Where tiles of TILE begin along SIZE: a quarter overlapping, the last one flush with the end."""
    if size <= tile:
        return [0]
    stride = tile - tile // 4
    return sorted({*range(0, size - tile, stride), size - tile})


def window(length: int, ramp: int) -> torch.Tensor:
    """1 in the middle, falling linearly over RAMP samples to 1 / (RAMP + 1) at each end: never 0, so a sample that
    one tile alone covers (an image's border) keeps its value."""
    index = torch.arange(length, dtype=torch.float32)
    return torch.minimum(torch.ones(length), torch.minimum(index + 1, length - index) / (ramp + 1))


def blend(run, inputs: torch.Tensor, tile: int, scale: float) -> torch.Tensor:
    """RUN over INPUTS ([batch, channels, height, width]) in tiles of TILE a side, its outputs (SCALE times the size
    of their inputs) averaged where tiles overlap, each weighted by its window. INPUTS within one tile: RUN whole."""
    height, width = inputs.shape[-2:]
    if height <= tile and width <= tile:
        return run(inputs)
    out, weights = None, None
    ramp = round(tile // 4 * scale)
    for top in starts(height, tile):
        for left in starts(width, tile):
            made = run(inputs[..., top:top + tile, left:left + tile])
            part, dtype = made.float(), made.dtype
            rows, cols = part.shape[-2:]
            if out is None:
                out = torch.zeros(*part.shape[:2], round(height * scale), round(width * scale))
                weights = torch.zeros(round(height * scale), round(width * scale))
            mask = window(rows, ramp)[:, None] * window(cols, ramp)[None, :]
            y, x = round(top * scale), round(left * scale)
            out[..., y:y + rows, x:x + cols] += part * mask
            weights[y:y + rows, x:x + cols] += mask
    return (out / weights).to(dtype)
