"""Canned machines (tests/fixtures/machines/NAME/) as MachineTexts and CpuInfo, for the hardware and launcher tests."""

from pathlib import Path

from sdcpu.system.hardware import CpuInfo, from_texts, MachineTexts, parse_cpu_list

ROOT = Path(__file__).parent / "fixtures" / "machines"
NAMES = sorted(p.name for p in ROOT.iterdir() if p.is_dir())


def texts(name: str) -> MachineTexts:
    folder = ROOT / name
    atom = folder / "cpu_atom"
    return MachineTexts(
        cpuinfo=(folder / "cpuinfo").read_text(), lscpu=(folder / "lscpu").read_text(),
        affinity=parse_cpu_list((folder / "affinity").read_text()), cpu_max=(folder / "cpu.max").read_text(),
        meminfo=(folder / "meminfo").read_text(), efficiency_cpus=atom.read_text() if atom.exists() else "",
    )


def machine(name: str) -> CpuInfo:
    return from_texts(texts(name))
