"""The `ipex` step: Intel Extension for PyTorch, the seed's framework rung. End-of-life (last release 2.8, tied to
torch 2.8): applied only when it is installed and built for the torch in use, skipped with the reason otherwise."""

from sdcpu import families
from sdcpu.errors import Skip
from sdcpu.models import state


def apply(pipe, item, cpu) -> str:
    import torch

    try:
        import intel_extension_for_pytorch as ipex
    except ImportError:
        raise Skip("intel_extension_for_pytorch is not installed (end-of-life; its last release needs torch 2.8)") from None
    if ipex.__version__.split("+")[0].rsplit(".", 1)[0] != torch.__version__.split("+")[0].rsplit(".", 1)[0]:
        raise Skip(f"IPEX {ipex.__version__} does not match torch {torch.__version__}")
    family = families.of(pipe)
    dtype = next(getattr(pipe, family.denoiser.attribute).parameters()).dtype
    for name in family.components:
        setattr(pipe, name, ipex.optimize(getattr(pipe, name).eval(), dtype=dtype, inplace=True))
    state.of(pipe).runtime = state.Runtime.IPEX
    return f"{', '.join(family.components)} prepared by ipex.optimize ({dtype}), IPEX {ipex.__version__}"
