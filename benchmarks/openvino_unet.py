"""Time the random-weight SD 1.5 UNet (batch 2, 64x64 latent, text states 2x77x768: one denoising step with
classifier-free guidance) in ONE configuration per process: eager torch fp32, OpenVINO f32 static shapes, or OpenVINO
with the bf16 precision hint. OpenVINO runs through sdcpu's own path (backends.openvino: convert, IR on disk, the UNet
wrapper compiled for the static shape). Prints one JSON row: the median forward of --runs after one warm-up,
conversion and compile times (cold when $SDCPU_HOME has no IR or compiled blob for it, warm on the next process),
max abs difference vs eager for the same inputs, and peak RSS (after building the model, and over the whole run).

    SDCPU_HOME=/tmp/ovbench python benchmarks/openvino_unet.py eager
    SDCPU_HOME=/tmp/ovbench python benchmarks/openvino_unet.py ov-f32    # cold: converts and compiles
    SDCPU_HOME=/tmp/ovbench python benchmarks/openvino_unet.py ov-f32    # warm: IR and compiled blob from disk
    SDCPU_HOME=/tmp/ovbench python benchmarks/openvino_unet.py ov-bf16
"""

import argparse
import gc
import json
import logging
import statistics
import time

import torch

from sdcpu.backends import openvino as backend
from sdcpu.models.random_models import build_pipeline
from sdcpu.system import children
from sdcpu.system.home import sdcpu_home

CONFIGS = {"eager": None, "ov-f32": "f32", "ov-bf16": "bf16"}


def peak_rss_gib() -> float:
    return round(children.peak_rss_gib(), 2)


def inputs():
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(2, 4, 64, 64, generator=generator), torch.tensor(999),
            torch.randn(2, 77, 768, generator=generator))


def timed(forward, runs: int):
    """Seconds per call (the warm-up first, then RUNS timed calls) and the last call's output."""
    times = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        output = forward()
        times.append(time.perf_counter() - start)
    return times, output


def openvino_unet(path, config, precision: str, row: dict):
    """The UNet wrapper sdcpu's openvino step installs, compiled for the benchmark's shapes (timed apart)."""
    core, compile_config = backend.runtime(precision)
    wrapper = backend.UNet(backend.Compiled(core, path, compile_config, "unet"), config)
    sample, _, states = inputs()
    start = time.perf_counter()
    wrapper.run.compile((tuple(sample.shape), (sample.shape[0],), tuple(states.shape)))
    row["compile_s"] = round(time.perf_counter() - start, 1)
    return wrapper


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", choices=CONFIGS)
    parser.add_argument("--runs", type=int, default=3, help="timed forwards after one warm-up (default %(default)s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    precision = CONFIGS[args.config]

    row = {"config": args.config, "threads": torch.get_num_threads(), "torch": torch.__version__}
    start = time.perf_counter()
    unet = build_pipeline("sd15").unet  # the other components are dropped with the pipeline
    gc.collect()
    row["build_s"], row["peak_rss_after_build_gib"] = round(time.perf_counter() - start, 1), peak_rss_gib()
    sample, timestep, states = inputs()
    if precision:
        import openvino

        row["openvino"] = openvino.__version__.split("-")[0]
        with torch.inference_mode():
            reference = unet(sample, timestep, states, return_dict=False)[0]
        path = sdcpu_home() / "openvino" / f"bench-sd15-unet-v{backend.IR_FORMAT}" / "unet.xml"
        row["ir_cached"] = path.is_file()
        start = time.perf_counter()
        if not row["ir_cached"]:
            backend.convert(unet, "unet", path)
        row["convert_s"] = round(time.perf_counter() - start, 1)
        config = unet.config
        del unet  # torch weights freed before compiling, as the step does
        gc.collect()
        unet = openvino_unet(path, config, precision, row)
    with torch.inference_mode():
        times, (output,) = timed(lambda: unet(sample, timestep, states, return_dict=False), args.runs)
    if precision:
        row["max_abs_vs_eager"] = float((output - reference).abs().max())
    row.update(warmup_s=round(times[0], 2), times_s=[round(t, 2) for t in times[1:]],
               median_s=round(statistics.median(times[1:]), 2), peak_rss_gib=peak_rss_gib())
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
