"""Does torch.compile (inductor) pay for FLUX.2's transformer on this CPU? One single-stream block of klein 4B (width
3072, 24 heads of 128, MLP ratio 3) over the tokens of a 512x512 image (1024 image + 512 text), eager against
torch.compile of the same module, in one process, eager timed before and after the compiled calls. Random weights.

    python benchmarks/flux2_compile_block.py                # bf16 weights computed in float32, as weights=bf16 runs
    python benchmarks/flux2_compile_block.py --frozen-f32   # float32 weights, inductor's freezing (folded constants)
    python benchmarks/flux2_compile_block.py --bf16         # bf16 throughout, frozen: where bf16 is native (AMX)

The block is one of the transformer's 25 (5 double- and 20 single-stream) and about 4% of its FLOPs.
"""

import argparse
import statistics
import time
from types import MethodType

import torch
from diffusers.models.transformers.transformer_flux2 import Flux2PosEmbed, Flux2SingleTransformerBlock

from sdcpu.backends.weights import _linear_bf16
from sdcpu.families import flux2

WIDTH = flux2.TRANSFORMER["num_attention_heads"] * flux2.TRANSFORMER["attention_head_dim"]


def block(form: str) -> torch.nn.Module:
    torch.manual_seed(0)
    made = Flux2SingleTransformerBlock(WIDTH, flux2.TRANSFORMER["num_attention_heads"],
                                       flux2.TRANSFORMER["attention_head_dim"], flux2.TRANSFORMER["mlp_ratio"]).eval()
    if form != "upcast":  # frozen as sdcpu's compile step compiles (sdcpu.backends.inductor)
        import torch._inductor.config as inductor

        inductor.freezing = True
        return made.to(torch.bfloat16) if form == "bf16" else made
    made.to(torch.bfloat16)  # what weights=bf16 does: the linears' weights kept bf16, everything else float32
    for module in made.modules():
        if isinstance(module, torch.nn.Linear):
            module.forward = MethodType(_linear_bf16, module)
        elif getattr(module, "weight", None) is not None:
            module.float()
    return made


FORMS = {"upcast": "bf16 weights computed in float32", "f32": "float32 weights, frozen",
         "bf16": "bf16 weights and activations, frozen"}


def times(call, count: int) -> list[float]:
    seconds = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    forms = parser.add_mutually_exclusive_group()
    forms.add_argument("--frozen-f32", action="store_const", dest="form", const="f32")
    forms.add_argument("--bf16", action="store_const", dest="form", const="bf16")
    parser.add_argument("--tokens", type=int, default=1536)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    form = args.form or "upcast"
    dtype = torch.bfloat16 if form == "bf16" else torch.float32
    module = block(form)
    x, temb = torch.randn(1, args.tokens, WIDTH, dtype=dtype), torch.randn(1, 3 * WIDTH, dtype=dtype)
    ids = torch.stack(torch.meshgrid(torch.arange(1), torch.arange(args.tokens), torch.arange(1), torch.arange(1),
                                     indexing="ij"), -1).reshape(-1, 4)
    rope = Flux2PosEmbed(theta=flux2.TRANSFORMER["rope_theta"], axes_dim=list(flux2.TRANSFORMER["axes_dims_rope"]))(ids)
    with torch.inference_mode():
        eager = lambda: module(x, None, temb, image_rotary_emb=rope)  # noqa: E731
        expected = eager()
        before = times(eager, args.calls)
        compiled = torch.compile(module)
        start = time.perf_counter()
        got = compiled(x, None, temb, image_rotary_emb=rope)
        first = time.perf_counter() - start
        fast = times(lambda: compiled(x, None, temb, image_rotary_emb=rope), args.calls)
        after = times(eager, args.calls)
    drift = ((got - expected).float().abs().max() / expected.float().abs().max()).item()
    e, c = statistics.median(before + after), statistics.median(fast)
    print(f"{FORMS[form]}, {args.tokens} tokens, {torch.get_num_threads()} threads: eager {e * 1000:.1f} ms (before "
          f"{statistics.median(before) * 1000:.1f}, after {statistics.median(after) * 1000:.1f}), compiled "
          f"{c * 1000:.1f} ms ({e / c:.3f}x), first compiled call {first:.1f} s, largest difference {drift:.1e} "
          f"of the output's largest value")


if __name__ == "__main__":
    main()
