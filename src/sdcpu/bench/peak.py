"""Hardware-relative figures: what this CPU's matmuls deliver at best, beside what a denoiser forward costs (its
family's `flops`).

A timing alone says little across machines; FLOPs over seconds against the measured matmul peak says how far a run is
from the machine's physical limit (nanoGPT's MFU, gpt-fast's GB/s).
"""

import time


def matmul_peak_gflops(dtype_name: str = "float32", size: int = 2048, seconds: float = 2.0) -> float:
    """The best GFLOP/s of a SIZE^3 matmul in DTYPE on torch's threads, over about SECONDS of repeats."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # warm-up: thread pool, kernel selection
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9
