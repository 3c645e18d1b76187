"""Batched vs sequential: the serve worker's batching (`--max-batch`) measured through the code it runs,
generate.run_batch. N single-image requests of the same size and steps, made one call each, then in one call.

    python benchmarks/serve_batching.py --model random:sd15 --recipe auto --size 256x256 --steps 4 --batch 4

Run it under the recipe's launch plan, as the server does (`sdcpu launch --auto -- python ...`). The warm-up call
(compiling backends compile at each batch size) is made apart and printed apart.
"""

import argparse
import time

from sdcpu import load_pipeline
from sdcpu.pipeline import generate, optimizer
from sdcpu.system import hardware
from workload import add_workload


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload(parser)
    parser.add_argument("--batch", type=int, default=4, help="requests batched together")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    width, height = generate.parse_size(args.size)
    cpu = hardware.detect()
    pipe = load_pipeline(args.model)
    optimizer.optimize(pipe, optimizer.resolve(args.recipe, cpu), cpu)
    requests = [generate.Request(f"prompt {i}", steps=args.steps, width=width, height=height, seed=i)
                for i in range(args.batch)]
    start = time.perf_counter()
    for call in (requests[:1], requests):
        generate.run_batch(pipe, call)
    print(f"warm-up (batch 1 and {args.batch}): {time.perf_counter() - start:.1f} s")
    sequential, batched = [], []
    for _ in range(args.runs):
        sequential.append(sum(generate.run_batch(pipe, [request]).seconds for request in requests))
        batched.append(generate.run_batch(pipe, requests).seconds)
    best_seq, best_batch = min(sequential), min(batched)
    print(f"{args.model}, recipe {args.recipe}, {args.size}, {args.steps} steps, {args.batch} requests, best of "
          f"{args.runs}: sequential {best_seq:.2f} s ({best_seq / args.batch:.2f} s/image), batched {best_batch:.2f} s "
          f"({best_batch / args.batch:.2f} s/image): batching {best_seq / best_batch:.2f}x")


if __name__ == "__main__":
    main()
