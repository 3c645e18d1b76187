"""A ControlNet's call on eager torch and on OpenVINO, side by side in one process: the same ControlNet (the model's
family's for canny; a random: model's replica is the same in both) called with the same inputs (batch 2, as with
classifier-free guidance; the control map at the image's size), a warm-up each, then alternating timed calls.

    SDCPU_HOME=... python benchmarks/controlnet_call.py --model random:sd15 --recipe openvino=f32 --size 512x512

Prints each side's seconds per call, their ratio, the outputs' largest difference and the process's peak RSS.
"""

import argparse
import statistics
import time

import torch

from sdcpu import families, load_pipeline, optimize
from sdcpu.pipeline import control, generate
from sdcpu.system import children
from workload import add_workload


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload(parser)
    parser.add_argument("--runs", type=int, default=4, help="timed calls on each side")
    args = parser.parse_args()
    width, height = generate.parse_size(args.size)
    eager = control.controlnet(load_pipeline(args.model), "canny")
    pipe = load_pipeline(args.model)
    optimize(pipe, args.recipe)
    start = time.perf_counter()
    converted = control.controlnet(pipe, "canny")
    print(f"{args.recipe}: the ControlNet ready in {time.perf_counter() - start:.1f} s (its IR converted the first "
          "time, with the UNet's taking its residuals)")
    family = families.of(pipe)
    scale = pipe.vae_scale_factor
    latent = (height // scale, width // scale)
    inputs = family.example_inputs(eager.config, 2, latent, torch.float32, torch.Generator().manual_seed(0))
    cond = torch.rand(2, eager.config.conditioning_channels, height, width, generator=torch.Generator().manual_seed(1))
    positional, kwargs = family.denoiser.call_arguments(inputs)
    sides = {"eager": lambda: eager(*positional, **kwargs, controlnet_cond=cond, return_dict=False),
             "openvino": lambda: converted(*positional, **kwargs, controlnet_cond=cond, return_dict=False)}
    seconds, outputs = {name: [] for name in sides}, {}
    with torch.no_grad():
        for name, call in sides.items():
            outputs[name] = call()  # warm-up: OpenVINO compiles for this size
        for _ in range(args.runs):
            for name, call in sides.items():
                start = time.perf_counter()
                call()
                seconds[name].append(time.perf_counter() - start)
    flat = {name: (*down, mid) for name, (down, mid) in outputs.items()}
    difference = max((a - b).abs().max().item() for a, b in zip(flat["eager"], flat["openvino"]))
    largest = max(a.abs().max().item() for a in flat["eager"])
    for name, times in seconds.items():
        print(f"{name}: {', '.join(f'{t:.2f}' for t in times)} s a call, median {statistics.median(times):.2f}")
    ratio = statistics.median(seconds["eager"]) / statistics.median(seconds["openvino"])
    print(f"openvino {ratio:.2f}x eager; outputs' largest difference {difference:.1e} (values up to {largest:.1f}); "
          f"peak RSS {children.peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
