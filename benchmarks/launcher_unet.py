"""Time one random-weight SD 1.5 UNet forward (batch 2, 64x64 latent, fp32, text states 2x77x768): the work of one
denoising step with classifier-free guidance. Prints one JSON row with the launcher's proof (sdcpu.verify) attached.

    sdcpu launch --auto -- python benchmarks/launcher_unet.py --runs 3
"""

import argparse
import json
import os
import statistics
import time

import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

from sdcpu import verify
from sdcpu.random_models import ARCHS

BATCH, LATENT, TOKENS = 2, 64, 77


def inputs(device="cpu"):
    generator = torch.Generator().manual_seed(1)
    cross = ARCHS["sd15"].unet["cross_attention_dim"]
    return (torch.randn(BATCH, 4, LATENT, LATENT, generator=generator).to(device), torch.tensor(999, device=device),
            torch.randn(BATCH, TOKENS, cross, generator=generator).to(device))


def forward_flops() -> int:
    """FLOPs of one forward, counted on the meta device (no compute, no weights)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**ARCHS["sd15"].unet)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        unet(*inputs("meta"))
    return counter.get_total_flops()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="timed forwards after one warm-up (default %(default)s)")
    args = parser.parse_args()

    started = time.perf_counter()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**ARCHS["sd15"].unet).eval()
    sample, timestep, states = inputs()
    build_s = time.perf_counter() - started
    times = []
    with torch.inference_mode():
        for run in range(args.runs + 1):  # run 0 is the warm-up
            start = time.perf_counter()
            unet(sample, timestep, states)
            times.append(time.perf_counter() - start)
    snap = verify.snapshot()
    flops = forward_flops()
    median = statistics.median(times[1:])
    print(json.dumps({
        "instance": os.environ.get("SDCPU_INSTANCE", "0"), "threads": torch.get_num_threads(),
        "warmup_s": round(times[0], 3), "times_s": [round(t, 3) for t in times[1:]], "median_s": round(median, 3),
        "gflops_per_forward": round(flops / 1e9, 1), "achieved_gflop_s": round(flops / median / 1e9, 1),
        "build_s": round(build_s, 1), "mapped": [os.path.basename(p) for p in snap["mapped"]],
        "affinity": snap["affinity"], "env": snap["env"], "verify_failures": verify.check(snap),
    }), flush=True)


if __name__ == "__main__":
    main()
