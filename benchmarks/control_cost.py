"""A ControlNet's cost on one recipe, in one process: after a warm-up call with and one without the control (the
first run's costs: OpenVINO converts the UNet's IR taking residuals once, then compiles it), images alternate without
and with it (A B A B), each timed; the UNet calls per image come from the split.

    SDCPU_HOME=... python benchmarks/control_cost.py --model random:sd15 --recipe openvino=f32 --size 512x512 --steps 4

Prints each image's seconds, the median of each side, the difference per UNet call, and the process's peak RSS.
"""

import argparse
import io
import statistics
import time

from PIL import Image, ImageDraw

from sdcpu import load_pipeline, optimize
from sdcpu.pipeline import control, generate
from sdcpu.system import children
from workload import add_workload


def house(size: int) -> bytes:
    """A control image: a house's outline (a square under a triangle) on black."""
    image = Image.new("RGB", (size, size), "black")
    draw = ImageDraw.Draw(image)
    draw.rectangle((size * 3 // 16, size * 5 // 16, size * 13 // 16, size * 7 // 8), fill="white")
    draw.polygon([(size // 8, size * 11 // 32), (size // 2, size // 10), (size * 7 // 8, size * 11 // 32)], fill="gray")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload(parser)
    parser.add_argument("--runs", type=int, default=2, help="images on each side")
    args = parser.parse_args()
    width, height = generate.parse_size(args.size)
    pipe = load_pipeline(args.model)
    print(optimize(pipe, args.recipe))
    steer = control.control(house(max(width, height)), "canny")
    request = generate.Request("a house", steps=args.steps, width=width, height=height, seed=1)
    for label, extra in (("without", None), ("with", steer)):
        start = time.perf_counter()
        generate.run(pipe, request, control=extra)
        print(f"first run {label} the control: {time.perf_counter() - start:.1f} s (conversion and compiles included)")
    seconds, calls = {"without": [], "with": []}, 0
    for _ in range(args.runs):
        for label, extra in (("without", None), ("with", steer)):
            result = generate.run(pipe, request, control=extra)
            seconds[label].append(result.seconds)
            calls = result.split.calls.get("unet", calls)
            print(f"{label}: {result.summary(args.steps)}")
    without, made = statistics.median(seconds["without"]), statistics.median(seconds["with"])
    print(f"median s/image: {without:.2f} without, {made:.2f} with the control (+{made / without - 1:.0%}); "
          f"{(made - without) / calls:.2f} s more per UNet call ({calls} calls); peak RSS "
          f"{children.peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
