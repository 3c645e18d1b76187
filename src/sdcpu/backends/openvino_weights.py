"""The `weights=int8|int4` step after `openvino`: the text encoders' and the denoiser's IR weights compressed by
NNCF's weight-only compression (`nncf.compress_weights`), as optimum-intel and OpenVINO GenAI ship large models.

- int8: every weight asymmetric int8 per output channel (NNCF's INT8_ASYM);
- int4: MatMul weights asymmetric 4-bit in groups of 128 along the input (INT4_ASYM, ratio 1), the last layer and
  the embeddings int8 (NNCF's backup precision; a bf16 model's embedding is traced as a float32 table for it:
  sdcpu.backends.openvino).
OpenVINO's CPU plugin keeps compressed weights compressed and decompresses them inside its matmul kernels, where an
uncompressed bf16 IR is expanded to the precision it computes in when it compiles (float32 on a CPU without native
bf16: FLUX.2's 3.9B-parameter transformer 15.5 GB). Activations keep the run's precision; no calibration.

Each compressed IR is written once beside its component's (`<name>-int8.xml`, `<name>-int4.xml`) by a child process
(sdcpu.backends.int8_child: its peak is its own, the IR read memory-mapped) and reused by later processes. The
compressed runtime takes no LoRA (a dW added to compressed weights would need compressing again).
"""

import importlib.util
import time
from importlib import metadata

from sdcpu import families
from sdcpu.backends import int8, openvino
from sdcpu.errors import Skip
from sdcpu.models import state
from sdcpu.system import home, locks

METHODS = {"int8": "weights", "int4": "int4"}  # the form -> sdcpu.backends.int8_child's method
# a compressed IR's size against a bf16 one's, at most: FLUX.2's measured 0.50-0.56 (int8), 0.26-0.35 (int4)
SHARE = {"int8": 0.6, "int4": 0.4}
HOW = {"int8": "int8 (asymmetric, per output channel)",
       "int4": "4 bits (asymmetric, groups of 128; the last layer and embeddings int8)"}


def apply(pipe, form: str) -> str:
    """Compress the weights of PIPE's OpenVINO text encoders and denoiser to FORM (int8, int4); what was done."""
    family = families.of(pipe)
    if form not in METHODS:
        raise Skip(f"weights={form} stores eager torch weights; on OpenVINO the IR holds the model's own weights and "
                   "openvino=f32|bf16 sets the precision they are computed in")
    if importlib.util.find_spec("nncf") is None:
        raise Skip("nncf is not installed: pip install -c constraints.txt nncf")
    start, made = time.perf_counter(), []
    for name in (*family.text_encoders, family.denoiser.attribute):
        stand_in = getattr(pipe, name)
        run = stand_in.run
        path = run.path.with_name(f"{name}-{form}.xml")
        if not path.is_file():
            with locks.exclusive(path):  # another process compressing it: wait for its IR
                if not path.is_file():
                    locks.remove_stale(path)
                    size = run.path.with_suffix(".bin").stat().st_size  # the bf16 or float32 weights it compresses
                    home.check_space(path.parent, int(size * SHARE[form]), f"compressing {name}'s weights to {form}")
                    peak = int8.quantize_in_child(METHODS[form], run.path, [], path)
                    made.append(f"{name} (child's peak RSS {peak / 2**30:.1f} GiB)")
        stand_in.run = openvino.Compiled(run.core, path, run.config, path.stem)
    kept = state.of(pipe)
    kept.runtime, kept.stored = state.Runtime.OPENVINO_COMPRESSED, form
    done = (f"compressed {', '.join(made)} in {time.perf_counter() - start:.1f} s" if made else
            "compressed IR reused")
    return (f"weights of {', '.join((*family.text_encoders, family.denoiser.attribute))} on OpenVINO compressed to "
            f"{HOW[form]} by NNCF {metadata.version('nncf')}, decompressed in OpenVINO's matmul kernels; {done}")
