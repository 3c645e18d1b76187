"""Hardware-relative figures: what a UNet forward costs in FLOPs and what this CPU's matmuls deliver at best.

A timing alone says little across machines; FLOPs over seconds against the measured matmul peak says how far a run is
from the machine's physical limit (nanoGPT's MFU, gpt-fast's GB/s).
"""

import time


def unet_flops(config, batch: int, latent: tuple[int, int], tokens: int = 77) -> int:
    """FLOPs of one forward of a UNet2DConditionModel with CONFIG, counted by torch's flop counter on the meta device
    (no weights, no compute). Attention runs through the math processor: the counter does not count SDPA kernels."""
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel(**{k: v for k, v in dict(config).items() if not k.startswith("_")})
        unet.set_attn_processor(AttnProcessor())
        sample = torch.empty(batch, unet.config.in_channels, *latent)
        states = torch.empty(batch, tokens, unet.config.cross_attention_dim)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            unet(sample, torch.tensor(999), states)
    return counter.get_total_flops()


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
