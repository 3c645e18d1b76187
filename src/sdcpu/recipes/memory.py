"""How much memory a recipe needs on a model family: `auto`'s fit check. A level whose candidate does not fit the
machine falls back to the next candidate, with the reason (sdcpu.recipes.auto).

An estimate, not a measurement: the family's parameters (Family.parameters) times the bytes each weight is kept in
under the recipe, plus what a process holds beside its weights (the runtime, and the activations, which grow with the
image's pixels). Two figures, since a recipe's first run may convert or quantize once (kept on disk for later runs):

- steady: making images. Weights in fp32 take 4 bytes, bf16 (the `bf16` step where it runs, OpenVINO bf16 on a
  native-bf16 CPU, a family loaded in bf16 on torch) 2, int8 weights 1 (weight-only int8: see INT8_WEIGHTS_SHARE);
  `compile` keeps the eager weights beside inductor's frozen copy; `tiny-vae` drops the VAE; NNCF-compressed IR
  weights (`openvino,weights=int8|int4`) what FLUX.2's measured (OPENVINO_STORED_BYTES). Loading maps the model's
  files: a weight never touched is not resident (an OpenVINO recipe whose IR is on disk never touches the torch
  weights it replaces).
- first run: OpenVINO's conversion traces one torch module at a time (fp32, or a bf16 family's bf16 weights as they
  are) and holds part of its graph again. The weights it touched stay counted in RSS (16.3 GiB for SDXL-Turbo, 18.3
  for FLUX.2), but they are pages of the model's mapped files, which the kernel evicts under pressure: what the
  conversion needs is the module being converted, its graph and the runtime (SDXL's UNet: 12.9 GiB; random:sdxl-turbo's
  conversion completed in a 14 GiB cgroup, 2026-12-04; FLUX.2's, estimated 10.0, with its int4 compression in a 12
  GiB one, 2026-12-05). A model
  whose weights are not file-mapped (built in memory) needs them all. int8's quantization needs what the family
  measured (Family.int8_memory_gib).

Calibrated on random:sdxl-turbo at 512x512 (2026-12-04, BENCHMARKS.md, Zen 4 EPYC): baseline 14.09 GiB, estimated
14.1; openvino=bf16 7.65, estimated 7.7; openvino=bf16,tiny-vae 7.43, estimated 7.5; and on random:sdxl at 1024x1024,
4 steps with CFG (Zen 3 EPYC): baseline 16.81, estimated 16.8; openvino=f32 (warm cache) 17.13, estimated 16.8;
openvino=f32,int8,tiny-vae 10.00, estimated 10.1; and the same networks (random:sdxl-turbo) there in a 16 GiB
cgroup: openvino=f32,release 11.10, estimated 11.3; openvino=f32,int8,tiny-vae 9.92, estimated 10.1;
openvino=f32,int8,tiny-vae,release 7.23, estimated 7.0.
"""

from dataclasses import dataclass

from sdcpu.recipes import bf16_runs

GIB = 2**30
HEADROOM = 0.9  # share of the machine's memory a recipe may plan for: the system and page cache keep the rest
RUNTIME_GIB = 0.8  # python, torch, diffusers, OpenVINO's libraries: a process's RSS before any weight
# Activations grow with the image's pixels, and faster: attention scores (the VAE decoder's mid-block attends over
# every latent position, one (HW/64)^2 matrix) grow with their square. Fitted on random:sdxl's measured baseline peaks
# at 512 and 1024 pixels (14.09 and 16.81 GiB: 0.37 and 3.09 GiB above the weights and runtime)
ACTIVATION_GIB_PER_MPIX = 0.9  # per million output pixels
ATTENTION_GIB_PER_MPIX2 = 1.95  # per (million output pixels) squared
CONVERSION_SHARE = 0.27  # OpenVINO's conversion: the converted component's fp32 weights held again, this share
# `compile`: the eager weights and inductor's frozen constants, by the bytes of a weight: float32 fitted on SD (two
# whole copies); bf16 on FLUX.2 at 512x512 (19.10 against 13.94 GiB eager: +5.2 GiB for a 7.2 GiB transformer, its
# VAE compiled too; 2-core AMX Xeon, 2026-12-05)
COMPILE_COPIES = {4: 2.0, 2: 1.7}


@dataclass(frozen=True)
class Job:
    """What the recipe will make: a model of FAMILY at WIDTHxHEIGHT (CONTROL: steered by a ControlNet); `describe`
    names where the family came from."""

    family: object  # sdcpu.families.base.Family
    width: int
    height: int
    describe: str = ""
    control: bool = False  # a ControlNet steers it: only recipes whose UNet takes its residuals (StepKind.control)

    @classmethod
    def default(cls) -> "Job":
        """Where the model is not known before it loads: SD's, at its default size (the family a model of no known
        family loads as)."""
        from sdcpu.families import sd

        defaults = sd.FAMILY.defaults
        return cls(sd.FAMILY, defaults.width, defaults.height, "the model's family not known before it loads: SD's")


@dataclass(frozen=True)
class Need:
    steady_gib: float  # peak RSS while making images, with what the first run writes already on disk
    first_gib: float  # peak RSS of the first run (equal to steady where it writes nothing)
    first_what: str  # what the first run does once ("" when nothing)

    @property
    def peak_gib(self) -> float:
        return max(self.steady_gib, self.first_gib)

    def unfit(self, memory_bytes: int) -> str | None:
        """Why this need does not fit a machine of MEMORY_BYTES, or None."""
        room = HEADROOM * memory_bytes / GIB
        if self.first_gib > room and self.first_gib > self.steady_gib:
            return (f"its first run ({self.first_what}) needs about {self.first_gib:.1f} GiB, more than "
                    f"{HEADROOM:.0%} of this machine's {memory_bytes / GIB:.1f} GiB")
        if self.steady_gib > room:
            return (f"needs about {self.steady_gib:.1f} GiB, more than {HEADROOM:.0%} of this machine's "
                    f"{memory_bytes / GIB:.1f} GiB")
        return None


# What a denoiser weight takes once its int8 IR is compiled by OpenVINO, by the family's int8 method: NNCF's hybrid
# scheme keeps int8 weights (1 byte); with weight-only int8 the CPU plugin decompresses part of them for its kernels:
# random:sdxl-turbo's UNet at 1024x1024 in f32 took 5.3 GiB beside the runtime and its buffers, 2.2 bytes a weight,
# 0.55 of f32's 4 (measured with and without the release step in a 16 GiB cgroup, Zen 3, 2026-12-04); in bf16
# random:sdxl's at 1024x1024 with tiny-vae peaked 0.44 GiB below its bf16 weights' run (7.94 against 8.38 GiB, 2-core
# AMX Xeon, 2026-12-05): 1.82 bytes a weight, 0.91 of bf16's 2. By the bytes of the precision it is compiled in:
INT8_BYTES, INT8_WEIGHTS_SHARE = 1.0, {4: 0.55, 2: 0.91}
# A weight under the weights step: int4 is half a byte plus a float32 scale and minimum per 128 (0.5625), and
# FLUX.2's Qwen3 keeps 389M of its 3.11B parameters in an int8 embedding (0.62 bytes a parameter over the encoder)
STORED_BYTES = {"bf16": 2.0, "int8": 1.0, "int4": 0.62}
# A text-encoder or denoiser weight of an OpenVINO IR the weights step compressed (NNCF:
# sdcpu.backends.openvino_weights), once compiled, buffers included: int4 fitted on random:flux2-klein-4b at 512x512
# (peak 6.31 GiB, every part compiled, 2-core Zen 3, 2026-12-05), its groups' scales and zero points counted; int8
# derived from its 10.24 GiB measured before the Qwen3 embedding (389M parameters) was compressed too (it was widened
# to float32), less that embedding's 1.1 GiB: not measured again
OPENVINO_STORED_BYTES = {"int8": 1.04, "int4": 0.60}


def weight_bytes(recipe, cpu, family) -> dict[str, float]:
    """Bytes per parameter of each part ("text", "denoiser", "decoder") of FAMILY's model under RECIPE on CPU, while
    making images."""
    openvino, bf16 = recipe.get("openvino"), recipe.get("bf16")
    if openvino is not None:
        precision = openvino.value or ("bf16" if cpu.native_bf16 else "f32")
        size = 2 if precision == "bf16" and cpu.native_bf16 else 4  # elsewhere OpenVINO falls back to f32 kernels
    else:  # torch: bf16 where the bf16 step runs, else the family's dtype (FLUX.2 loads in bf16)
        size = 2 if (bf16 is not None and bf16_runs(bf16, cpu)) or family.dtype == "bfloat16" else 4
    parts = {"text": size, "denoiser": size, "decoder": size}
    stored = recipe.get("weights")
    if openvino is None and stored is not None:  # the VAE in float32 outright (sdcpu.backends.weights)
        parts = {"text": STORED_BYTES[stored.value], "denoiser": STORED_BYTES[stored.value], "decoder": 4}
    elif stored is not None and stored.value in OPENVINO_STORED_BYTES:  # NNCF-compressed IR weights
        parts |= {"text": OPENVINO_STORED_BYTES[stored.value], "denoiser": OPENVINO_STORED_BYTES[stored.value]}
    if recipe.get("int8") is not None:
        if openvino is None:
            parts["denoiser"] = INT8_BYTES + size  # PT2E keeps the eager weights too
        else:
            parts["denoiser"] = INT8_WEIGHTS_SHARE[size] * size if family.int8 == "weights" else INT8_BYTES
    if recipe.get("compile") is not None:
        parts["denoiser"] *= COMPILE_COPIES[size]
    if recipe.get("tiny-vae") is not None:
        parts["decoder"] = 0  # the distilled decoder's ~1M parameters
    return parts


RELEASE = "release"  # the step that keeps one part of a call compiled at a time (sdcpu.backends.release)


def releases(recipe) -> bool:
    """Whether RECIPE keeps one part resident at a time (the `release` step: compiled on OpenVINO, mapped on torch)."""
    return recipe.get(RELEASE) is not None


def need(family, recipe, cpu, width: int, height: int) -> Need:
    """What RECIPE needs on FAMILY's model at WIDTHxHEIGHT on CPU."""
    parameters = family.parameters
    megapixels = width * height / 1e6
    weights = {part: parameters[part] * size / GIB for part, size in weight_bytes(recipe, cpu, family).items()}
    denoising = ACTIVATION_GIB_PER_MPIX * megapixels  # the denoiser's buffers, kept by its compiled model
    decoding = denoising  # the decoder's at full resolution; the VAE's attends over every latent position at once
    if recipe.get("tiny-vae") is None:  # (the distilled decoder has no attention)
        decoding += ATTENTION_GIB_PER_MPIX2 * megapixels**2
    if releases(recipe) and recipe.get("openvino") is not None:  # the largest part alone (measured on
        # random:sdxl-turbo at 1024x1024: UNet +10.4 GiB over the runtime with its buffers, the VAE +3.3 GiB;
        # estimated 10.5 and 3.3; see the calibration above)
        steady = RUNTIME_GIB + max(weights["text"], weights["denoiser"] + denoising, weights["decoder"] + decoding)
    elif releases(recipe):  # torch: the text encoders or the denoiser mapped at a time, the VAE kept beside
        steady = RUNTIME_GIB + max(weights["text"], weights["denoiser"] + max(denoising, weights["decoder"] + decoding))
    else:
        steady = RUNTIME_GIB + sum(weights.values()) + decoding
    steady += family.overhead_gib
    first, what = steady, []
    if recipe.get("openvino") is not None:  # one component's torch weights and its graph at a time (see above)
        traced = 2 if family.dtype == "bfloat16" else 4  # a bf16 family is traced with its bf16 weights
        first = max(first, RUNTIME_GIB + (1 + CONVERSION_SHARE) * traced * max(parameters.values()) / GIB)
        what.append(f"OpenVINO converts the {'bf16' if traced == 2 else 'fp32'} model")
        if recipe.get("int8") is not None:
            first = max(first, family.int8_memory_gib)
            what.append(f"int8 quantizes the {family.denoiser.label}")
        stored = recipe.get("weights")
        if stored is not None and stored.value in OPENVINO_STORED_BYTES:  # NNCF in a child, a part at a time
            first = max(first, RUNTIME_GIB + max(parameters.values()) / GIB)  # measured 4.1 GiB: FLUX.2's int8
            what.append(f"NNCF compresses the weights to {stored.value}")
    return Need(round(steady, 1), round(first, 1), "; ".join(what))
