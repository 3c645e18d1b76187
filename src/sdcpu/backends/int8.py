"""The `int8` step: the UNet quantized to 8 bits, after the backend that runs it (`openvino,int8` or `compile,int8`).

- After `openvino`: NNCF's hybrid quantization, as optimum-intel does for diffusion (`quant_method="hybrid"`), since
  plain int8 post-training quantization of a diffusion UNet visibly hurts its images: (1) weights of the MatMul layers
  (linear projections) compressed to int8, their activations left as they are; (2) everything else quantized fully
  (weights and activations): the convolutions and the attention's activation-by-activation MatMuls. The quantized IR
  is kept beside the UNet's ($SDCPU_HOME/openvino/<key>/unet-int8.xml): later processes reuse it. The quantization
  runs in a child process (sdcpu.backends.int8_child) after this one drops its compiled UNet, so the two peaks do
  not add up: on random:sd15, child 6.1 GiB and this process 4.4 GiB, where quantizing in place peaked at 13.9 GiB.
  A machine with less memory than the family's `int8_memory_gib` is refused with the reason (an OOM kill is not a
  slow first run).
- After `compile`: torchao's PT2E flow (torch.ao.quantization is deprecated): the eager fp32 UNet exported with
  dynamic batch and latent size, X86InductorQuantizer's default static int8 (weights per channel, activations per
  tensor), then compiled by inductor with the compile step's frozen weights. Done in every process (minutes for SD 1.5).
  The export covers CFG batches (2 to 32): torch.export specializes a batch of 1, so guidance <= 1 is refused.

Activation ranges are calibrated on the UNet's inputs while the pipeline makes CALIBRATION_PROMPTS at the UNet's native
size, CALIBRATION_STEPS steps each: offline, no data set needed.
"""

import gc
import importlib.util
import logging
import subprocess
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from sdcpu import families
from sdcpu.backends import int8_child
from sdcpu.backends.components import Denoiser, Entry
from sdcpu.errors import Skip
from sdcpu.models import state
from sdcpu.system import locks
from sdcpu.system.launcher import python_module

log = logging.getLogger(__name__)

CALIBRATION_PROMPTS = (
    "a photograph of an astronaut riding a horse", "a bowl of fruit on a wooden table, oil painting",
    "a futuristic city skyline at night, neon lights", "portrait of an old fisherman, dramatic lighting",
)
CALIBRATION_STEPS = 5
# a family's `int8` -> its quantized IR's name beside the UNet's
IR_NAMES = {"hybrid": "unet-int8.xml", "weights": "unet-int8w.xml"}
METHODS = {  # a family's `int8` -> what the step's detail calls it, and what it does
    "hybrid": ("hybrid int8", "int8 weights on linear layers, int8 weights and activations on convolutions and "
               "attention matmuls"),
    "weights": ("weights-only int8", "int8 weights (asymmetric, per output channel) on every linear and convolution "
                "layer, activations in the run's precision, no calibration"),
}


def apply(pipe, step, cpu) -> str:
    family = families.of(pipe)
    if family.inpainting(pipe):
        raise Skip(f"int8 calibrates on text-to-image calls, which an inpainting {family.denoiser.label} cannot make")
    runtime = state.of(pipe).runtime
    if runtime.int8 == "nncf":
        return _openvino(pipe, cpu, family)
    if runtime.int8 == "pt2e":
        return _inductor(pipe, family)
    raise Skip(f"int8 quantizes the {family.denoiser.label} a backend runs, not {runtime.summary}: put it after "
               "`openvino` (NNCF) or `compile` (torchao PT2E)")


class Recorder:
    """Stands in for the pipeline's denoiser and keeps the tensor inputs of each call, in its family's order."""

    def __init__(self, denoiser, signature):
        self.denoiser, self.signature, self.calls = denoiser, signature, []

    def __getattr__(self, name):
        return getattr(self.denoiser, name)

    def __call__(self, *args, **kwargs):
        inputs, _ = self.signature.bind(args, kwargs)
        self.calls.append(tuple(x.clone() for x in inputs))
        return self.denoiser(*args, **kwargs)


def calibration_inputs(pipe, family) -> list[tuple]:
    """The denoiser's inputs (sample, timestep per batch item, the family's others) over the calibration images."""
    name = family.denoiser.attribute
    denoiser = getattr(pipe, name)
    recorder = Recorder(denoiser, family.denoiser)
    setattr(pipe, name, recorder)
    try:
        side = family.native_size(pipe)
        for index, prompt in enumerate(CALIBRATION_PROMPTS):
            pipe(prompt, num_inference_steps=CALIBRATION_STEPS, height=side, width=side, output_type="latent",
                 generator=torch.Generator().manual_seed(index))
    finally:
        setattr(pipe, name, denoiser)
    return recorder.calls


def _openvino(pipe, cpu, family) -> str:
    if importlib.util.find_spec("nncf") is None:
        raise Skip("nncf is not installed: pip install -c constraints.txt nncf")
    from sdcpu.backends import openvino

    stand_in = getattr(pipe, family.denoiser.attribute)
    run = stand_in.run
    path, made = run.path.with_name(IR_NAMES[family.int8]), ""
    name, what = METHODS[family.int8]
    if not path.is_file():
        if cpu.memory_bytes < family.int8_memory_gib * 2**30:
            raise Skip(f"the one-time {name} quantization of this {family.denoiser.label} needs "
                       f"{family.int8_memory_gib} GiB of memory, this machine has {cpu.memory_bytes / 2**30:.1f} GiB")
        with locks.exclusive(path):  # another process quantizing this UNet: wait for its IR
            made = "" if path.is_file() else _quantize(pipe, family, run, path)
    compiled = openvino.Compiled(run.core, path, run.config, path.stem)
    setattr(pipe, family.denoiser.attribute, Denoiser(compiled, stand_in.config, stand_in.signature,
                                                      stand_in.latent_multiple))
    state.of(pipe).runtime = state.Runtime.OPENVINO_INT8
    return f"{family.denoiser.label} {name} (NNCF {metadata.version('nncf')}): {what}{made}; IR {path}"


def _quantize(pipe, family, run, path: Path) -> str:
    """Quantize the UNet IR that RUN compiled into PATH by FAMILY's method (hybrid: calibrated on PIPE first); what was
    done, for the step's detail."""
    locks.remove_stale(path)  # the calibration samples and IR staging of a killed quantization
    start = time.perf_counter()
    calls = calibration_inputs(pipe, family) if family.int8 == "hybrid" else []
    run.release()  # the child reads the IR from disk: this process's compiled UNet would only add to the peak
    gc.collect()
    peak = quantize_in_child(family.int8, run.path, calls, path)
    calibrated = f", calibrated on {len(calls)} {family.denoiser.label} calls and" if calls else ","
    return (f"{calibrated} quantized in a child process in {time.perf_counter() - start:.1f} s (its peak RSS "
            f"{peak / 2**30:.1f} GiB)")


def quantize_in_child(method: str, source: Path, calls, target: Path) -> int:
    """Quantize the IR at SOURCE into TARGET by METHOD in a child process (sdcpu.backends.int8_child), calibrated on
    CALLS where it takes them; the child's peak RSS in bytes. Its memory goes back to the system when it exits."""
    folder = locks.staging(target, ".calibration")
    arguments = [method, str(source), str(target)]
    try:
        if calls:
            folder.mkdir()
            samples = folder / "samples.npz"
            np.savez(samples, **{f"{i}_{j}": x.numpy() for i, call in enumerate(calls) for j, x in enumerate(call)})
            arguments.append(str(samples))
        child = subprocess.Popen([*python_module("sdcpu.backends.int8_child"), *arguments], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        with child.stdout:
            output = child.stdout.read()
        code = child.wait()
    finally:
        locks.remove(folder)
    last = output.strip().splitlines()[-1:] or [f"exit {code}"]
    if code != 0:
        raise RuntimeError(f"int8 quantization failed in its child process: {last[0]}")
    return int(last[0].removeprefix(int8_child.PEAK))  # the child's own: its wait4 usage holds this process's size


def _inductor(pipe, family) -> str:
    try:
        from torchao.quantization.pt2e import quantize_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError:
        raise Skip("torchao is not installed: pip install -c constraints.txt torchao") from None
    if family.no_pt2e:
        raise Skip(family.no_pt2e)
    name = family.denoiser.attribute
    compiled = getattr(pipe, name)
    eager = compiled._orig_mod  # torch.compile's wrapper keeps the eager module
    if eager.dtype != torch.float32:
        raise Skip(f"PT2E int8 quantizes an fp32 {family.denoiser.label}, this one is {eager.dtype}: drop bf16 from the "
                   "recipe")
    if state.of(pipe).defaults.get("guidance_scale", family.defaults.guidance) <= 1:
        raise Skip(f"PT2E int8's exported {family.denoiser.label} takes CFG batches (2 or more); this recipe sets "
                   "guidance <= 1")
    start = time.perf_counter()
    setattr(pipe, name, eager)  # calibrate eagerly: the compiled module would compile first
    try:
        samples = calibration_inputs(pipe, family)
    finally:
        setattr(pipe, name, compiled)
    factor = family.latent_multiple(eager.config)
    batch = torch.export.Dim("batch", min=2, max=32)  # export specializes batch 1: CFG batches only
    height, width = torch.export.Dim("height", min=1, max=256), torch.export.Dim("width", min=1, max=256)
    dynamic = ({0: batch, 2: factor * height, 3: factor * width}, *({0: batch} for _ in samples[0][1:]))
    with torch.no_grad():
        entry = Entry(eager, signature=family.denoiser)  # Entry takes *inputs
        graph = torch.export.export(entry, samples[0], dynamic_shapes=(dynamic,)).module()
        quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
        prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
        for call in samples:
            prepared(*call)
        quantized = torch.compile(quantize_pt2e.convert_pt2e(prepared))
    setattr(pipe, name, Denoiser(quantized, eager.config, family.denoiser, factor))
    state.of(pipe).runtime = state.Runtime.PT2E_INT8
    return (f"{family.denoiser.label} int8 by torchao PT2E (X86InductorQuantizer: static int8 weights and "
            f"activations), calibrated on "
            f"{len(samples)} calls in {time.perf_counter() - start:.1f} s, compiled by inductor at its first call")
