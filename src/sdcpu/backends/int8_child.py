"""The int8 step's quantization of an OpenVINO UNet, run in a child process so that its peak memory is its own:
`python -m sdcpu.backends.int8_child METHOD SOURCE.xml TARGET.xml [SAMPLES.npz]`.

The child reads the fp32 IR from disk (memory-mapped), quantizes it in place (no copy of the model) by METHOD, a
family's `int8` (`hybrid`: NNCF's hybrid scheme, calibrated on the calls in SAMPLES, arrays `CALL_INPUT` as
sdcpu.backends.int8 writes them; `weights`: NNCF's weight-only int8, no samples; `int4`: its 4-bit weight
compression), and writes TARGET (staged, then
renamed: a crash leaves no half-written IR), keeping the mapped fp32 weights out of its RSS (sdcpu.backends.mapped).
The parent dropped its own compiled UNet before starting the child.
"""

import contextlib
import logging
import os
import sys
from pathlib import Path

import numpy as np

from sdcpu.system import children, locks


def hybrid(nncf, model, samples):
    """NNCF's hybrid quantization, as optimum-intel does for diffusion: int8 weights on the linear MatMuls (their
    activations left as they are), then full int8 (weights and activations) on everything else."""
    linear = [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul" and _has_weight(op)]
    compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM,
                                       ignored_scope=nncf.IgnoredScope(types=["Convolution"]))
    return nncf.quantize(
        compressed, nncf.Dataset(samples), subset_size=len(samples), model_type=nncf.ModelType.TRANSFORMER,
        ignored_scope=nncf.IgnoredScope(names=linear, validate=False),
        advanced_parameters=nncf.AdvancedQuantizationParameters(  # no SmoothQuant, as optimum-intel
            smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=-1)),
    )


def weights(nncf, model):
    """NNCF's weight-only int8: every weight (MatMul, Convolution, Gather: NNCF's default scope in an int8 mode) to
    asymmetric int8 per output channel, decompressed where it is used; activations stay in the run's precision."""
    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)


def int4(nncf, model):
    """NNCF's 4-bit weight compression: MatMul weights asymmetric 4-bit in groups of 128 (all of them: ratio 1; 64 or
    32 where 128 does not divide a weight's input, int8 where neither does), the last layer and the embeddings in
    int8 (its backup precision)."""
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=128, ratio=1.0,
                                 advanced_parameters=AdvancedCompressionParameters(
                                     group_size_fallback_mode=GroupSizeFallbackMode.ADJUST, min_adjusted_group_size=32))


METHODS = {"hybrid": hybrid, "weights": weights, "int4": int4}


def _has_weight(op) -> bool:
    """Whether a MatMul takes a constant (a weight) on either input, through Convert/Reshape/FakeQuantize."""
    for port in range(2):
        node = op.input_value(port).get_node()
        while node.get_type_name() in ("Convert", "Reshape", "FakeQuantize"):
            node = node.input_value(0).get_node()
        if node.get_type_name() == "Constant":
            return True
    return False


def load_samples(path) -> list[tuple]:
    """The calibration calls saved as arrays named CALL_INPUT, in call order."""
    with np.load(path) as arrays:
        keys = sorted(arrays.files, key=lambda key: tuple(map(int, key.split("_"))))
        calls: dict[int, list] = {}
        for key in keys:
            calls.setdefault(int(key.split("_")[0]), []).append(arrays[key])
    return [tuple(inputs) for _, inputs in sorted(calls.items())]


def save(model, path: str) -> None:
    import openvino as ov

    target = Path(path)
    staging = locks.staging(target, ".xml")
    try:
        ov.save_model(model, staging, compress_to_fp16=False)
        os.replace(staging.with_suffix(".bin"), target.with_suffix(".bin"))
        os.replace(staging, target)
    finally:
        locks.remove(staging, staging.with_suffix(".bin"))


def main(argv) -> int:
    method, source, target, *samples = argv
    import nncf
    import openvino as ov

    from sdcpu.backends import mapped

    logging.getLogger("nncf").setLevel(logging.WARNING)  # one INFO line per layer otherwise
    # NNCF draws progress bars on stdout; the IR's mapped weights stay out of RSS while NNCF's models copy them
    with contextlib.redirect_stdout(sys.stderr), mapped.released(Path(source).with_suffix(".bin")):
        model = ov.Core().read_model(source)
        save(METHODS[method](nncf, model, *map(load_samples, samples)), target)
    print(f"{PEAK}{children.peak_rss_bytes()}")
    return 0


PEAK = "peak RSS bytes: "  # the last line of the child's output


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
