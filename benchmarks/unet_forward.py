"""Time the random-weight SD 1.5 UNet in THIS process: batch 2, 64x64 latent, text states 2x77x768, i.e. one denoising
step of a 512x512 image with classifier-free guidance. The pipeline is loaded (`random:sd15`) and optimized through
`sdcpu.optimize` with --recipe, as a user's would be; system steps are the launcher's business (run this under
`sdcpu launch`). Prints one JSON row: the first call apart (it compiles, for compile and openvino), the median of --runs
calls after it, achieved GFLOP/s, peak RSS, the step outcomes, what the launcher verifiably applied, and the max abs
difference of the output from --reference (an eager run's output saved with --save).

    python benchmarks/unet_forward.py --recipe baseline --save /tmp/eager.pt
    python benchmarks/unet_forward.py --recipe channels_last,compile --reference /tmp/eager.pt
    sdcpu launch --auto -- python benchmarks/unet_forward.py
"""

import argparse
import json
import os
import statistics
import time

import torch

from sdcpu import families, load_pipeline, optimize
from sdcpu.system import children, verify
from sdcpu.tune.probe import BATCH, forward, time_calls

LATENT = 64


def peak_rss_gib() -> float:
    return round(children.peak_rss_gib(), 2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="baseline", help="framework steps for sdcpu.optimize (default %(default)s)")
    parser.add_argument("--runs", type=int, default=3, help="timed forwards after the first call (default %(default)s)")
    parser.add_argument("--save", help="write the output tensor here (the reference for other recipes)")
    parser.add_argument("--reference", help="an output saved by --save: report the max abs difference from it")
    args = parser.parse_args()

    start = time.perf_counter()
    pipe = load_pipeline("random:sd15")
    row = {"recipe": args.recipe, "instance": os.environ.get("SDCPU_INSTANCE", "0"),
           "threads": torch.get_num_threads(), "load_s": round(time.perf_counter() - start, 1),
           "rss_after_load_gib": peak_rss_gib()}
    pipe, outcomes = optimize(pipe, args.recipe)
    row["steps"] = [{"step": o.step, "applied": o.applied, "detail": o.detail, "s": round(o.seconds, 1)}
                    for o in outcomes]
    family = families.of(pipe)
    unet = getattr(pipe, family.denoiser.attribute)
    with torch.inference_mode():  # the first call compiles, for the compiling steps
        times, (output,) = time_calls(forward(family, unet, unet.config, (LATENT, LATENT)), args.runs + 1)
    median = statistics.median(times[1:])
    count = family.flops(unet.config, BATCH, (LATENT, LATENT))
    output = output.float()
    if args.save:
        torch.save(output, args.save)
    snap = verify.snapshot()
    row.update(
        first_call_s=round(times[0], 2), times_s=[round(t, 3) for t in times[1:]], median_s=round(median, 3),
        gflops_per_forward=round(count / 1e9, 1), achieved_gflop_s=round(count / median / 1e9, 1),
        max_abs_vs_reference=float((output - torch.load(args.reference)).abs().max()) if args.reference else None,
        peak_rss_gib=peak_rss_gib(), mapped=[os.path.basename(p) for p in snap["mapped"]],
        affinity=snap["affinity"], verify_failures=verify.check(snap),
    )
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
