"""What switching LoRAs costs on a pipeline optimized by a recipe (default: random:sd15 at 512x512 on `openvino=f32`,
what `auto` picks on an AVX2 machine without native bf16), through `sdcpu.use_loras`, the call `generate --lora` makes.

Two random LoRAs (A and B, rank --rank, peft layout on the UNet's attention projections: LCM-LoRA's shape) are built
offline from the model before the recipe runs. Prints one JSON row: the recipe's time (the IR conversion when
$SDCPU_HOME has none), the compile + one-step warm-up, s/image without a LoRA, then the seconds of each switch (first
A: dW + compile; A -> B: the same for B; back to A: the kept set; to none: the base models) with the RSS after each,
s/image with A and again without, and with --naive the cost of the naive way: converting a UNet with A fused into it
from torch again (conversion only; its compile comes on top).

    SDCPU_HOME=/tmp/lorabench python benchmarks/lora_switch.py
    python benchmarks/lora_switch.py --model random:tiny --size 64x64 --steps 2 --naive   # does it run
"""

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from sdcpu import load_pipeline, optimize, use_loras
from sdcpu.algorithms import lcm_lora
from sdcpu.models.loras import Lora
from sdcpu.pipeline import generate
from sdcpu.system import children


def rss_gib() -> float:
    """This process's resident memory now (VmRSS)."""
    return round(children.memory_bytes("VmRSS") / 2**30, 2)


def naive_conversion_s(model: str, lora: Lora) -> float:
    """Seconds to convert a fresh torch UNet with LORA fused into it (what reconverting per LoRA set would pay)."""
    from sdcpu.backends import openvino

    pipe = load_pipeline(model)
    pipe.load_lora_weights(lora.source)
    pipe.fuse_lora()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        openvino.convert(pipe.unet, "unet", Path(folder) / "unet.xml")
        return round(time.perf_counter() - start, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random:sd15")
    parser.add_argument("--size", default="512x512")
    parser.add_argument("--recipe", default="openvino=f32")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--naive", action="store_true", help="also time converting a LoRA-fused UNet from torch")
    args = parser.parse_args()
    width, height = generate.parse_size(args.size)
    request = generate.Request("a lighthouse on a cliff at dusk", steps=args.steps, width=width, height=height)
    row = {"model": args.model, "size": args.size, "recipe": args.recipe, "steps": args.steps, "rank": args.rank}

    pipe = load_pipeline(args.model)
    a, b = (Lora(str(lcm_lora.random_lora(pipe, rank=args.rank, seed=seed))) for seed in (1, 2))
    start = time.perf_counter()
    _, outcomes = optimize(pipe, args.recipe)
    row["recipe_s"] = round(time.perf_counter() - start, 1)
    row["recipe_detail"] = "; ".join(map(str, outcomes))
    row["warmup_s"] = round(generate.run(pipe, dataclasses.replace(request, steps=1)).seconds, 1)
    row["base_s_per_image"] = round(generate.run(pipe, request).seconds, 2)
    row["rss_base_gib"] = rss_gib()
    for label, loras in (("first_a", (a,)), ("switch_a_to_b", (b,)), ("back_to_a", (a,)), ("to_none", ())):
        start = time.perf_counter()
        row[f"{label}_detail"] = use_loras(pipe, loras)
        row[f"{label}_s"] = round(time.perf_counter() - start, 2)
        row[f"rss_after_{label}_gib"] = rss_gib()
        if label == "back_to_a":
            row["lora_s_per_image"] = round(generate.run(pipe, request).seconds, 2)
    row["none_s_per_image"] = round(generate.run(pipe, request).seconds, 2)
    row["peak_rss_gib"] = round(children.peak_rss_gib(), 2)
    if args.naive:
        row["naive_unet_conversion_s"] = naive_conversion_s(args.model, a)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
