"""Peak RSS and seconds of one VAE decode at large sizes, whole and in tiles (sdcpu.pipeline.vae_tiles), each in a
fresh process; the tiled image's PSNR against the whole one where both ran.

    python benchmarks/vae_tiles.py --model random:sd15 --sizes 1024,2048 --tiles 0,1024,512

The model's VAE only is loaded (a diffusers folder, or a random: model, built first); latents are random (a decoder's cost does not depend
on their values). Figures go to stdout as a markdown table.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(model: str, size: int, tile: int, out: str) -> None:
    import diffusers
    import numpy as np
    import torch

    from sdcpu.models import random_models
    from sdcpu.pipeline import vae_tiles
    from sdcpu.system import children

    folder = random_models.ensure_built(model.removeprefix("random:")) if model.startswith("random:") else Path(model)
    kind = json.loads((Path(folder) / "vae" / "config.json").read_text())["_class_name"]
    vae = getattr(diffusers, kind).from_pretrained(folder, subfolder="vae").eval()  # the VAE alone: its RSS only
    torch.set_grad_enabled(False)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latents = torch.randn(1, vae.config.latent_channels, size // factor, size // factor,
                          generator=torch.Generator().manual_seed(0), dtype=vae.dtype)
    before = children.peak_rss_gib()
    start = time.perf_counter()
    with vae_tiles.tiled(vae, tile):
        image = vae.decode(latents, return_dict=False)[0]
    seconds = time.perf_counter() - start
    pixels = ((image.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    np.save(out, pixels)
    print(json.dumps({"seconds": seconds, "rss_before_gib": before,
                      "peak_gib": children.peak_rss_gib()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:sd15", help="random:NAME or a diffusers folder")
    parser.add_argument("--sizes", default="1024,2048")
    parser.add_argument("--tiles", default="0,1024,512", help="tile sides in pixels (0: whole)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, size, tile, out = args.child
        return child(model, int(size), int(tile), out)
    import numpy as np

    print(f"| {args.model} | tile | s | RSS before decode (GiB) | peak RSS (GiB) | PSNR vs whole (dB) |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for size in map(int, args.sizes.split(",")):
            whole = None
            for tile in map(int, args.tiles.split(",")):
                out = str(Path(folder) / f"{size}-{tile}.npy")
                done = subprocess.run([sys.executable, __file__, "--child", args.model, str(size), str(tile), out],
                                      capture_output=True, text=True)
                if done.returncode:
                    print(f"| {size}x{size} | {tile or 'whole'} | failed ({done.returncode}: "
                          f"{(done.stderr.strip().splitlines() or ['killed'])[-1][:80]}) | | | |")
                    continue
                figures = json.loads(done.stdout.strip().splitlines()[-1])
                pixels = np.load(out).astype(float)
                if tile == 0:
                    whole = pixels
                error = None if whole is None or tile == 0 else np.mean((pixels - whole) ** 2)
                db = "" if error is None else ("inf" if error == 0 else f"{10 * np.log10(255**2 / error):.1f}")
                print(f"| {size}x{size} | {tile or 'whole'} | {figures['seconds']:.1f} | "
                      f"{figures['rss_before_gib']:.2f} | {figures['peak_gib']:.2f} | {db} |", flush=True)


if __name__ == "__main__":
    main()
