"""The `compile` step: torch.compile (inductor) of the denoiser and the VAE decoder, weights frozen and prepacked.

Compilation is lazy: the first call at a new shape pays it (minutes for SD 1.5 on a few cores). Freezing turns the
weights into constants that inductor folds and prepacks into oneDNN's blocked layouts; the FX graph cache, kept under
$SDCPU_HOME/inductor, lets a second process skip most of the compile.
"""

import os

from sdcpu import families
from sdcpu.models import state
from sdcpu.system.home import sdcpu_home


def apply(pipe, item, cpu) -> str:
    import torch
    import torch._inductor.config as inductor
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    # Inductor reads the variable at each compile, and writes its default there once anything asks: a value equal to
    # that default was not the user's choice.
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR", default_cache_dir()) == default_cache_dir():
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(sdcpu_home() / "inductor")

    inductor.freezing = True
    inductor.fx_graph_cache = True
    family = families.of(pipe)
    setattr(pipe, family.denoiser.attribute, torch.compile(getattr(pipe, family.denoiser.attribute)))
    decoder = getattr(pipe, family.decoder)
    decoder.decode = torch.compile(decoder.decode)
    state.of(pipe).runtime = state.Runtime.INDUCTOR
    return (
        f"{family.denoiser.label} and VAE decoder compiled by inductor with frozen, prepacked weights; the first call "
        f"at each size compiles (reported apart), graphs cached in {os.environ['TORCHINDUCTOR_CACHE_DIR']}"
    )
