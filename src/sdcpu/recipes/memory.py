"""How much memory a recipe needs on a model family: `auto`'s fit check. A level whose candidate does not fit the
machine falls back to the next candidate, with the reason (sdcpu.recipes.auto).

An estimate, not a measurement: the family's parameters (Family.parameters) times the bytes each weight is kept in
under the recipe, plus what a process holds beside its weights (the runtime, and the activations, which grow with the
image's pixels). Two figures, since a recipe's first run may convert or quantize once (kept on disk for later runs):

- steady: making images. Weights in fp32 take 4 bytes, bf16 (the `bf16` step where it runs, OpenVINO bf16 on a
  native-bf16 CPU) 2, int8 weights 1; `compile` keeps the eager weights beside inductor's frozen copy; `tiny-vae`
  drops the VAE. Loading maps the model's files: a weight never touched is not resident (an OpenVINO recipe whose IR is
  on disk never touches the torch weights it replaces).
- first run: OpenVINO's conversion traces the fp32 torch modules (every weight touched) and holds part of the largest
  one's graph again; int8's quantization needs what the family measured (Family.int8_memory_gib).

Calibrated on random:sdxl-turbo at 512x512 (2026-12-04, BENCHMARKS.md, Zen 4 EPYC): baseline 14.09 GiB, estimated
14.1; openvino=bf16 7.65, estimated 7.7; openvino=bf16,tiny-vae 7.43, estimated 7.5; openvino=f32's first run 16.27,
estimated 16.3; and on random:sdxl at 1024x1024, 4 steps with CFG (Zen 3 EPYC): baseline 16.81, estimated 16.8;
openvino=f32 (warm cache) 17.13, estimated 16.8; openvino=f32,int8,tiny-vae 10.00, estimated 9.3 (the int8 UNet's
buffers beyond its weights).
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
CONVERSION_SHARE = 0.27  # OpenVINO's conversion: the largest component's fp32 weights held again, this share
COMPILE_COPIES = 2  # `compile`: the eager weights and inductor's frozen constants


@dataclass(frozen=True)
class Job:
    """What the recipe will make: a model of FAMILY at WIDTHxHEIGHT; `describe` names where the family came from."""

    family: object  # sdcpu.families.base.Family
    width: int
    height: int
    describe: str = ""

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


def weight_bytes(recipe, cpu) -> dict[str, float]:
    """Bytes per parameter of each part ("text", "denoiser", "decoder") under RECIPE on CPU, while making images."""
    openvino, bf16 = recipe.get("openvino"), recipe.get("bf16")
    if openvino is not None:
        precision = openvino.value or ("bf16" if cpu.native_bf16 else "f32")
        size = 2 if precision == "bf16" and cpu.native_bf16 else 4  # elsewhere OpenVINO falls back to f32 kernels
    else:
        size = 2 if bf16 is not None and bf16_runs(bf16, cpu) else 4
    parts = {"text": size, "denoiser": size, "decoder": size}
    if recipe.get("int8") is not None:
        parts["denoiser"] = 1 if openvino is not None else 1 + size  # PT2E keeps the eager weights too
    if recipe.get("compile") is not None:
        parts["denoiser"] *= COMPILE_COPIES
    if recipe.get("tiny-vae") is not None:
        parts["decoder"] = 0  # the distilled decoder's ~1M parameters
    return parts


def need(family, recipe, cpu, width: int, height: int) -> Need:
    """What RECIPE needs on FAMILY's model at WIDTHxHEIGHT on CPU."""
    parameters = family.parameters
    megapixels = width * height / 1e6
    beside = RUNTIME_GIB + ACTIVATION_GIB_PER_MPIX * megapixels + ATTENTION_GIB_PER_MPIX2 * megapixels**2
    steady = beside + sum(parameters[part] * size for part, size in weight_bytes(recipe, cpu).items()) / GIB
    first, what = steady, []
    if recipe.get("openvino") is not None:
        fp32 = 4 * sum(parameters.values()) / GIB
        first = max(first, RUNTIME_GIB + fp32 + CONVERSION_SHARE * 4 * max(parameters.values()) / GIB)
        what.append("OpenVINO converts the fp32 model")
        if recipe.get("int8") is not None:
            first = max(first, family.int8_memory_gib)
            what.append(f"int8 quantizes the {family.denoiser.label}")
    return Need(round(steady, 1), round(first, 1), "; ".join(what))
