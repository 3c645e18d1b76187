"""`auto`'s hardware rules: the CPU classes sdcpu tells apart and, for each, the recipe that measured fastest there at
each quality level, with the measurement behind it. Data only; `sdcpu.recipes.auto` takes the first candidate whose needs are
met on the machine at hand (its modules installed, and its memory: sdcpu.recipes.memory estimates what the candidate
needs for the model's family and size), and `sdcpu tune` replaces the rules with this machine's own measurements.

A class is told from the ISA flags alone (`classify`). Figures are s/image of `sdcpu bench --model random:sd15
--preset quick` (256x256, 4 steps; random weights, the real architecture), in one run side by side, on 2-core KVM
guests; BENCHMARKS.md holds each run with its command and date. A class whose rules rest on published figures or on
a neighbouring class says so in its summary.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    steps: str  # recipe steps, "" for the model eagerly as it loads (fp32 for SD and SDXL, bf16 for FLUX.2)
    why: str  # the measurement it rests on
    needs: tuple[str, ...] = ()  # Python modules that must be importable
    # (model family, the measurement): a family for which this candidate measured slower than the next ones of its
    # level; for that family it is tried after them (taken where they do not fit the memory)
    slower_for: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class CpuClass:
    name: str
    summary: str  # what the class is and what its rules rest on
    exact: tuple[Candidate, ...]  # fp32 only: every image within 1e-4 of eager fp32
    high: tuple[Candidate, ...]  # adds native reduced precision (bf16 where the CPU has it)
    fast: tuple[Candidate, ...]  # adds steps that cut work


# This project's measurements on the AVX-512 Xeon without bf16 (2026-12-01, BENCHMARKS.md), cited by other classes.
AVX512_OPENVINO = "9.28 vs 12.05 s (1.30x, 2026-12-01; with iomp beside it 11.93 s: no gain)"
AVX512_INT8 = ("on the AVX-512 Xeon (VNNI), A B A B: +int8 1.50x and 1.75x over OpenVINO f32 (UNet 0.76 and 0.66 vs "
               "1.62 and 1.50 s per call), 39.8 dB; with tiny-vae 3.70 vs 10.70 s/image for vanilla (2.89x)")
AVX512_SYSTEM = "jemalloc,iomp,pin 0.86x and tcmalloc,iomp,pin 1.10x on the AVX-512 Xeon"

# This project's runs on the Zen 4 EPYC (2-core KVM, AVX512_BF16 without AMX), 2026-12-03, BENCHMARKS.md.
ZEN4_RUNS = ("`sdcpu bench --model random:sd15 --preset quick` with baseline, auto:exact, auto and auto:fast, once with "
             "torch bf16 (issue 25) and once with bf16,compile beside them")
ZEN4_COMPILE = ("bf16,compile 7.39 vs OpenVINO bf16 7.77 s/image in one run, then 8.11 and 7.38 vs 7.05 and 6.92 A B A "
                "B (peak RSS 5.50 vs 2.73-2.91 GiB; 89-96 s of compiling even with inductor's cache warm)")

EAGER = Candidate("", "fp32 eager: nothing measured faster without openvino (pip install -c constraints.txt openvino)")
# Without OpenVINO (or for `high` on a class without native bf16) a long-running server compiles the fp32 UNet once.
COMPILE = Candidate("compile", "compile (inductor, fp32): +compile 1.45x over the system rung in the AVX2 EPYC's full "
                    "ladder (2026-12-01), after ~4 minutes of compiling in each process: only where one process "
                    "serves many images")
DEEPCACHE = Candidate("deepcache=2,tiny-vae", "deepcache=2 and tiny-vae on the eager UNet: 1.23x on the AVX2 EPYC "
                      "(2026-12-01, with the slower jemalloc,iomp,pin beside them); deepcache=2 alone 1.36x at 43.6 dB")

# `fast`'s last candidate on every class, after the class's own: eager torch in the least memory sdcpu has for a UNet
# family (FLUX.2 refuses TAESD and has its own); measured on SDXL, 2-core Zen 3, 2026-12-05 (BENCHMARKS.md)
LEAST_MEMORY = Candidate("weights=int8,tiny-vae", "int8 weights computed in float32 on the eager denoiser and TAESD: "
                         "the least memory of the fast recipes: SDXL at 1024x1024 with CFG ran inside a 7 GiB cgroup "
                         "(385 s for 4 steps); SDXL-Turbo at 512 2.20x vanilla at 5.78 GiB where openvino=f32,tiny-vae "
                         "is 2.84x at 14.41 GiB")

# What every class without native bf16 measured, AVX2 and AVX-512 alike: OpenVINO f32 is faster than torch and exact.
_NO_BF16 = dict(
    exact=(
        Candidate("openvino=f32", "OpenVINO f32: exact (PSNR 85 dB vs fp32 eager); AVX2 EPYC 15.51 vs 21.57 s (1.39x, "
                  "2026-12-01), sdcpu tune there chose it too (1.41x, A B A B); AVX-512 Xeon without bf16 "
                  f"{AVX512_OPENVINO}", needs=("openvino",)),
        COMPILE, EAGER,
    ),
    high=(),  # no native bf16: high is exact's recipe
    fast=(
        Candidate("openvino=f32,int8,tiny-vae", "int8 (NNCF hybrid, 39.5 dB) and tiny-vae on OpenVINO f32: +int8 "
                  "1.34x over OpenVINO f32 and +tiny-vae 3.43x over vanilla in the AVX2 EPYC's full ladder "
                  f"(2026-12-01); {AVX512_INT8}", needs=("openvino", "nncf"),
                  slower_for=(("sdxl", "SDXL's int8 is weight-only, decompressed to f32 for the f32 kernels: UNet "
                               "138.4 vs 119.7 s a call at 1024x1024 on the AVX2 EPYC (2026-12-04; not measured on "
                               "AVX-512), for 10.0 instead of 17.1 GiB peak RSS"),)),
        Candidate("openvino=f32,tiny-vae", "tiny-vae on OpenVINO f32 (where int8 cannot be taken: "
                  "nncf missing, or its one-time quantization does not fit the memory)", needs=("openvino",)),
        DEEPCACHE,
    ),
)

CLASSES = {
    "amx": CpuClass(
        "amx", "AMX-BF16 (Sapphire Rapids and later): measured on a 2-core KVM Xeon, 2026-11-26/27",
        exact=(
            Candidate("openvino=f32", "OpenVINO f32: exact; faster than torch fp32 on both classes measured without "
                      "bf16 (AVX2 1.39x, AVX-512 1.30x); on AMX itself measured on SDXL at 1024x1024: 219.38 vs "
                      "254.41 s an image (1.16x, 84 dB, 2026-12-05)", needs=("openvino",)),
            EAGER,
        ),
        high=(
            Candidate("iomp,openvino=bf16", "OpenVINO bf16 with Intel OpenMP: sdcpu tune's choice (3.2-6.4x the default, "
                      "confirmed A B A B), 2.27 vs 16.18 s/image for vanilla (7.1x), 48.5 dB", needs=("openvino",)),
            Candidate("bf16", "torch bf16 on AMX: 5.12 vs 16.39 s/image (3.2x), 48 dB"),
        ),
        fast=(
            Candidate("iomp,openvino=bf16,int8,tiny-vae", "int8 and tiny-vae on OpenVINO bf16: +int8 1.30x and "
                      "+tiny-vae 1.60x in the full ladder (1.97 s/image, 8.0x vanilla), peak RSS 3.1 vs 6.5 GiB",
                      needs=("openvino", "nncf"),
                      slower_for=(("sdxl", "SDXL's int8 is weight-only: on OpenVINO bf16 its UNet ran 12.08 against "
                                   "10.84 s a CFG call at 1024x1024 (51.00 against 45.80 s an image with tiny-vae, "
                                   "0.90x) for 7.94 instead of 8.38 GiB peak RSS (2-core AMX Xeon, 2026-12-05)"),)),
            Candidate("iomp,openvino=bf16,tiny-vae", "tiny-vae on OpenVINO bf16 (where int8 cannot be "
                      "taken: nncf missing, or its one-time quantization does not fit the memory)",
                      needs=("openvino",)),
            Candidate("bf16,deepcache=2,tiny-vae", "deepcache=2 on torch bf16: 1.43x at 42.2 dB in the full ladder"),
        ),
    ),
    "avx512_bf16": CpuClass(
        "avx512_bf16", "AVX512_BF16 without AMX (Zen 4, Cooper Lake): measured on a 2-core KVM EPYC (Zen 4), "
        f"2026-12-03, in two runs: {ZEN4_RUNS}",
        exact=(
            Candidate("openvino=f32", "OpenVINO f32: exact (86.8 dB vs fp32 eager); 15.90 vs 22.61 s/image (1.42x) and "
                      "13.41 vs 24.12 s (1.80x) on the Zen 4 EPYC", needs=("openvino",)),
            COMPILE, EAGER,
        ),
        high=(
            Candidate("openvino=bf16", "OpenVINO bf16 (native AVX512_BF16 dot products): 7.77 vs 22.61 s/image (2.91x) "
                      "and 7.17 vs 24.12 s (3.36x) on the Zen 4 EPYC, 48.5 dB, peak RSS 4.45 GiB; in serve too: torch "
                      f"{ZEN4_COMPILE}: OpenVINO as fast or faster, at half the memory, without the compile",
                      needs=("openvino",)),
            Candidate("bf16,compile", "torch bf16,compile: 3.06x vanilla on the Zen 4 EPYC (7.39 vs 22.61 s/image), "
                      "after 160 s of compiling in each process: only where one process serves many images"),
            Candidate("bf16", "torch bf16: 11.14 vs 24.12 s/image (2.17x) on the Zen 4 EPYC"),
        ),
        fast=(
            Candidate("openvino=bf16,int8,tiny-vae", "int8 and tiny-vae on OpenVINO bf16: 4.10 vs 22.61 s/image "
                      "(5.52x) and 4.87 vs 24.12 s (4.95x) on the Zen 4 EPYC, peak RSS 4.45 GiB; the first run "
                      "quantizes the UNet once (556-689 s there, kept on disk)",
                      needs=("openvino", "nncf")),
            Candidate("openvino=bf16,tiny-vae", "tiny-vae on OpenVINO bf16 (where int8 cannot be "
                      "taken: nncf missing, or its one-time quantization does not fit the memory)",
                      needs=("openvino",)),
            Candidate("bf16,deepcache=2,tiny-vae", "deepcache=2 and tiny-vae on torch bf16 (deepcache=2 measured "
                      "1.43x on AMX; not measured on this class)"),
        ),
    ),
    "avx512": CpuClass(
        "avx512", "AVX-512 without AVX512_BF16 or AMX (Skylake-SP to Ice Lake, or a VM that masks AMX): measured on "
        "a 2-core KVM Xeon with AMX masked, 2026-12-01", **_NO_BF16),
    "avx2": CpuClass(
        "avx2", "AVX2 without AVX-512 (Zen 2/3 EPYC, Haswell to Comet Lake): measured on a 2-core KVM EPYC (Zen 3), "
        "2026-12-01 (issue 13's figures)", **_NO_BF16),
    "aarch64_bf16": CpuClass(
        "aarch64_bf16", "aarch64 with BF16 (Neoverse V1/V2, N2): no sdcpu measurement on Arm; torch's bf16 "
        "kernels there come from the Arm Compute Library, which dispatches native bf16 kernels where the CPU has "
        "them (oneDNN's fpmath documentation); `sdcpu tune` measures what is fastest",
        exact=(EAGER,),
        high=(Candidate("bf16", "torch bf16: Armv8.6 BF16 instructions (published, not measured by sdcpu)"),),
        fast=(Candidate("bf16,deepcache=2,tiny-vae", "deepcache=2 and tiny-vae cut UNet and decoder work on any CPU "
                        "(measured on x86 only)"),),
    ),
    "aarch64": CpuClass(
        "aarch64", "aarch64 without BF16 (Neoverse N1): no sdcpu measurement on Arm; only work-cutting steps, whose "
        "gain does not depend on the ISA",
        exact=(EAGER,), high=(),
        fast=(Candidate("deepcache=2,tiny-vae", "deepcache=2 and tiny-vae cut UNet and decoder work on any CPU "
                        "(measured on x86 only)"),),
    ),
    "x86": CpuClass(
        "x86", "x86-64 without AVX2: nothing measured; fp32 eager", exact=(EAGER,), high=(), fast=(DEEPCACHE,)),
}

NO_CHANNELS_LAST = ("no channels_last on any class: no measured gain (fp32 SD 1.5 UNet forward 12.3 vs 12.5 s on an "
                    "AVX2 EPYC, 8.4 vs 7.1 s on an AMX Xeon) and +2.9 GiB peak RSS while the weights are converted")

# The system steps (allocator, Intel OpenMP, pinning), by physical cores: the seed's 2.7x was measured on 32 cores;
# on 2 cores every class measured them neutral to harmful.
SYSTEM_MIN_CORES = 32
SYSTEM = Candidate("jemalloc,iomp,pin", "the seed's system rung: 32.3 -> 11.8 s per SD 1.5 image on a 32-core "
                   "Sapphire Rapids (Hugging Face, 'Accelerating Stable Diffusion Inference on Intel CPUs', 2023)")
NO_SYSTEM = ("no allocator, Intel OpenMP or pinning on {cores} physical cores: on 2 cores jemalloc,iomp,pin measured "
             "0.71-0.88x vanilla on the AVX2 EPYC (four runs) and 0.75-0.92x on the AMX Xeon, tcmalloc,iomp,pin "
             f"1.08x on the EPYC, {AVX512_SYSTEM}, inside the VMs' 10-25% spread; the seed's 2.7x is a "
             "{min_cores}-core figure")


def classify(cpu) -> str:
    """The class of CPU, from its ISA flags."""
    if cpu.arch == "aarch64":
        return "aarch64_bf16" if "bf16" in cpu.flags else "aarch64"
    for name, flag in (("amx", "amx_bf16"), ("avx512_bf16", "avx512_bf16"), ("avx512", "avx512f"), ("avx2", "avx2")):
        if flag in cpu.flags:
            return name
    return "x86"


def cpu_class(cpu) -> CpuClass:
    return CLASSES[classify(cpu)]


def system_reason(cpu) -> str:
    return NO_SYSTEM.format(cores=len(cpu.usable_physical_cores), min_cores=SYSTEM_MIN_CORES)
