"""The `int8` step: the OpenVINO UNet quantized to 8 bits by NNCF's hybrid scheme, as optimum-intel does for diffusion.

Plain int8 post-training quantization of a diffusion UNet visibly hurts its images, so hybrid quantization splits the
work (optimum-intel's `quant_method="hybrid"`):
1. weights of the MatMul layers (linear projections) compressed to int8 (asymmetric), activations left as they are;
2. everything else quantized fully (weights and activations): the convolutions and the attention's activation-by-
   activation MatMuls, with activation ranges calibrated on the UNet's inputs from a few generated images.
The calibration images are made here, offline: CALIBRATION_PROMPTS at the UNet's native size, CALIBRATION_STEPS steps
each, through the pipeline as it stands (so through the openvino UNet). The quantized IR is kept beside the UNet's
IR ($SDCPU_HOME/openvino/<key>/unet-int8.xml): later processes reuse it. Put `int8` after `openvino`.

Only the openvino backend has it: torchao's PT2E path for `compile` is not built (the step says so when it skips).
"""

import contextlib
import logging
import os
import sys
import time

from sdcpu.steps_base import Skip

log = logging.getLogger(__name__)

CALIBRATION_PROMPTS = (
    "a photograph of an astronaut riding a horse", "a bowl of fruit on a wooden table, oil painting",
    "a futuristic city skyline at night, neon lights", "portrait of an old fisherman, dramatic lighting",
)
CALIBRATION_STEPS = 5
IR_NAME = "unet-int8.xml"


def apply(pipe, step, cpu) -> str:
    from sdcpu.backends import openvino as backend

    if not isinstance(pipe.unet, backend.UNet):
        raise Skip("int8 quantizes the OpenVINO UNet: put it after `openvino` (torchao's PT2E quantization for "
                   "`compile` is not built yet)")
    try:
        import nncf  # noqa: F401 -- a clear skip rather than an ImportError half-way
    except ImportError:
        raise Skip("nncf is not installed: pip install -c constraints.txt nncf") from None
    run = pipe.unet.run
    path = run.path.with_name(IR_NAME)
    made = ""
    if not path.is_file():
        start = time.perf_counter()
        samples = calibration_inputs(pipe)
        save(quantize(run.model, samples), path)
        made = f", calibrated on {len(samples)} UNet calls and quantized in {time.perf_counter() - start:.1f} s"
    pipe.unet = backend.UNet(backend.Compiled(run.core, path, run.config, "unet-int8"), pipe.unet.config)
    return (f"UNet hybrid int8 (NNCF {nncf.__version__}): int8 weights on linear layers, int8 weights and activations "
            f"on convolutions and attention matmuls{made}; IR {path}")


def calibration_inputs(pipe) -> list[tuple]:
    """The UNet's inputs (numpy arrays) over CALIBRATION_PROMPTS x CALIBRATION_STEPS generated images."""
    import torch

    run, samples = pipe.unet.run, []

    def record(*inputs):
        samples.append(tuple(x.numpy().copy() for x in inputs))
        return run(*inputs)

    pipe.unet.run = record
    try:
        side = pipe.unet.config.sample_size * pipe.vae_scale_factor
        for index, prompt in enumerate(CALIBRATION_PROMPTS):
            pipe(prompt, num_inference_steps=CALIBRATION_STEPS, height=side, width=side, output_type="latent",
                 generator=torch.Generator().manual_seed(index))
    finally:
        pipe.unet.run = run
    return samples


def quantize(model, samples):
    """Hybrid quantization of the OpenVINO UNet MODEL, activations calibrated on SAMPLES."""
    import nncf

    linear = [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul" and _has_weight(op)]
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)  # one INFO line per layer otherwise
    try:
        with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: stdout is the commands' output
            compressed = nncf.compress_weights(model.clone(), mode=nncf.CompressWeightsMode.INT8_ASYM,
                                               ignored_scope=nncf.IgnoredScope(types=["Convolution"]))
            return nncf.quantize(
                compressed, nncf.Dataset(samples), subset_size=len(samples), model_type=nncf.ModelType.TRANSFORMER,
                ignored_scope=nncf.IgnoredScope(names=linear, validate=False),
                advanced_parameters=nncf.AdvancedQuantizationParameters(  # no SmoothQuant, as optimum-intel
                    smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=-1)),
            )
    finally:
        nncf_log.setLevel(level)


def _has_weight(op) -> bool:
    """Whether a MatMul takes a constant (a weight) on either input, through Convert/Reshape/FakeQuantize."""
    for port in range(2):
        node = op.input_value(port).get_node()
        while node.get_type_name() in ("Convert", "Reshape", "FakeQuantize"):
            node = node.input_value(0).get_node()
        if node.get_type_name() == "Constant":
            return True
    return False


def save(model, path):
    import openvino as ov

    staging = path.with_name(f".{path.stem}.{os.getpid()}.xml")
    ov.save_model(model, staging, compress_to_fp16=False)
    os.replace(staging.with_suffix(".bin"), path.with_suffix(".bin"))
    os.replace(staging, path)
    log.info("int8: saved the quantized UNet to %s", path)
