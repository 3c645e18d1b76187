"""The `weights=bf16|int8|int4` step: where the denoiser runs decides what stores the weights small. On eager torch,
sdcpu.backends.weights (every layer computed in float32 from its stored weight); after `openvino`, int8 and int4
compress the IR's weights (sdcpu.backends.openvino_weights); any other runtime refuses it."""

from sdcpu.errors import Skip
from sdcpu.models import state


def apply(pipe, step, cpu) -> str:
    runtime = state.of(pipe).runtime
    if runtime is state.Runtime.OPENVINO:
        from sdcpu.backends import openvino_weights

        return openvino_weights.apply(pipe, step.value)
    if runtime is state.Runtime.EAGER:
        from sdcpu.backends import weights

        return weights.apply(pipe, step, cpu)
    raise Skip(f"weights={step.value} stores eager torch or OpenVINO weights; the denoiser runs as {runtime.summary} "
               "here")
