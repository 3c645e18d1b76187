"""What fbcache's hooks cost a transformer call that runs every block: one FLUX.2 transformer call at a size, timed
without the hooks and with them (fbcache at a threshold no change is below), alternating A B A B ... in one process on
the same module and inputs (a bench of two rungs compares two processes, 10-25% apart on shared VMs). Random weights.

    SDCPU_HOME=... python benchmarks/fbcache_overhead.py --model random:flux2-klein-4b --size 512 --pairs 2
"""

import argparse
import statistics
import time

import torch

from sdcpu import families, load_pipeline, optimize
from sdcpu.algorithms import fbcache


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:flux2-klein-4b")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    from diffusers.hooks.hooks import HookRegistry

    pipe, _ = optimize(load_pipeline(args.model), "weights=bf16")  # what auto runs FLUX.2 with where it fits
    family = families.of(pipe)
    transformer = getattr(pipe, family.denoiser.attribute)
    latent = args.size // pipe.vae_scale_factor
    inputs = family.example_inputs(transformer.config, 1, (latent, latent), torch.float32,
                                   torch.Generator().manual_seed(0))
    positional, named = family.denoiser.call_arguments(inputs)

    def call() -> float:
        pipe.scheduler.timesteps = torch.zeros(1)  # a new schedule each call: fbcache starts afresh (a full call)
        start = time.perf_counter()
        with torch.inference_mode(), transformer.cache_context("cond"):
            transformer(*positional, **named)
        return time.perf_counter() - start

    warm = call()  # the first call pages the weights in and sizes the allocator: not timed with the others
    plain, hooked = [], []
    for _ in range(args.pairs):
        plain.append(call())
        optimize(pipe, "fbcache=1e-9")
        hooked.append(call())
        assert fbcache.tally(pipe).full == 1  # every block ran
        HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(fbcache.HOOK)
    a, b = statistics.median(plain), statistics.median(hooked)
    print(f"{args.model} at {args.size}x{args.size}, one transformer call, {torch.get_num_threads()} threads, after a "
          f"warm-up call of {warm:.2f} s: without "
          f"hooks {', '.join(f'{s:.2f}' for s in plain)} s (median {a:.2f}), with fbcache's hooks (every block run) "
          f"{', '.join(f'{s:.2f}' for s in hooked)} s (median {b:.2f}): {b / a:.3f}x the time")


if __name__ == "__main__":
    main()
