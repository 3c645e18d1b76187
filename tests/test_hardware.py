import dataclasses
import json
import os

import pytest

from machines import NAMES, machine, texts as machine_texts
from sdcpu.recipes import auto_rules
from sdcpu.system import hardware
from sdcpu.system.hardware import format_cpu_list, parse_cpu_list, parse_cpu_max, parse_topology

# name: (arch, vendor, model, sockets, physical cores, logical CPUs, threads/core, NUMA nodes, usable physical cores,
#        native bf16, flags present, flags absent, GiB)
EXPECTED = {
    "xeon-1s-smt": ("x86_64", "GenuineIntel", "Intel(R) Xeon(R) W-2245 CPU @ 3.90GHz", 1, 8, 16, 2, 1, "0-7", False,
                    {"avx2", "fma", "avx512f", "avx512_vnni"}, {"avx512_bf16", "amx_bf16", "avx_vnni"}, 64),
    "spr-2s-amx": ("x86_64", "GenuineIntel", "Intel(R) Xeon(R) Gold 6426Y", 2, 32, 64, 2, 2, "0-31", True,
                   {"avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"}, set(), 512),
    "container-limited": ("x86_64", "GenuineIntel", "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", 1, 32, 64, 2, 1,
                          "0-3", False, {"avx512f", "avx512_vnni"}, {"avx512_bf16", "amx_bf16"}, 256),
    "epyc-2core-avx2": ("x86_64", "AuthenticAMD", "AMD EPYC 7763 64-Core Processor", 1, 2, 2, 1, 1, "0-1", False,
                        {"avx2", "fma"}, {"avx512f", "avx512_bf16", "amx_bf16", "avx_vnni"}, 8),
    "epyc-zen4-2core-avx512bf16": ("x86_64", "AuthenticAMD", "AMD EPYC 9354 32-Core Processor", 1, 2, 2, 1, 1, "0-1",
                                   True, {"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, {"amx_bf16", "avx_vnni"}, 8),
    "kvm-xeon-avx512-noamx": ("x86_64", "GenuineIntel", "Intel(R) Xeon(R) Processor", 1, 2, 2, 1, 1, "0-1", False,
                              {"avx2", "fma", "avx512f", "avx512_vnni"}, {"avx512_bf16", "amx_bf16", "avx_vnni"}, 24),
    "graviton3-aarch64": ("aarch64", "ARM", "Neoverse-V1", 1, 16, 16, 1, 1, "0-15", True,
                          {"asimd", "sve", "bf16", "i8mm"}, {"avx2"}, 32),
    "i7-12700h-hybrid": ("x86_64", "GenuineIntel", "12th Gen Intel(R) Core(TM) i7-12700H", 1, 14, 20, 2, 1,
                         "0,2,4,6,8,10,12-19", False, {"avx2", "fma", "avx_vnni"}, {"avx512f", "amx_bf16"}, 16),
    "this-kvm-xeon-amx": ("x86_64", "GenuineIntel", "Intel(R) Xeon(R) Processor", 1, 2, 2, 1, 1, "0-1", True,
                          {"avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile", "avx_vnni"}, set(), 24),
    "this-kvm-epyc-zen4-avx512bf16": ("x86_64", "AuthenticAMD", "AMD EPYC", 1, 2, 2, 1, 1, "0-1", True,
                                      {"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, {"amx_bf16", "avx_vnni"}, 24),
    "graviton2-aarch64": ("aarch64", "ARM", "Neoverse-N1", 1, 16, 16, 1, 1, "0-15", False, {"asimd", "asimddp"},
                          {"bf16", "sve"}, 32),
    "xeon-e5-2core-avx": ("x86_64", "GenuineIntel", "Intel(R) Xeon(R) CPU E5-2670 0 @ 2.60GHz", 1, 2, 2, 1, 1, "0-1",
                          False, {"avx"}, {"avx2", "fma", "avx512f"}, 8),
}


def test_every_fixture_has_expectations():
    assert sorted(EXPECTED) == NAMES


def test_every_cpu_class_has_a_fixture():
    """So that the class rules run on every class, whatever machine the tests run on."""
    assert {auto_rules.classify(machine(name)) for name in NAMES} == set(auto_rules.CLASSES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_machine(name):
    arch, vendor, model, sockets, cores, logical, tpc, nodes, usable, bf16, present, absent, gib = EXPECTED[name]
    cpu = machine(name)
    assert (cpu.arch, cpu.vendor, cpu.model_name) == (arch, vendor, model)
    assert (cpu.sockets, cpu.physical_cores, cpu.logical_cpus, cpu.threads_per_core) == (sockets, cores, logical, tpc)
    assert len(cpu.numa_nodes) == nodes
    assert format_cpu_list(cpu.usable_physical_cores) == usable
    assert cpu.native_bf16 is bf16 and cpu.native_bf16_reason
    assert present <= cpu.flags and not absent & cpu.flags
    assert round(cpu.memory_bytes / 2**30) == gib
    json.dumps(cpu.to_dict())


def test_two_socket_numa_nodes_hold_their_cores_and_siblings():
    cpu = machine("spr-2s-amx")
    node0, node1 = cpu.numa_nodes
    assert (node0.cpus, node0.physical_cores) == (tuple(range(0, 16)) + tuple(range(32, 48)), 16)
    assert (node1.cpus, node1.physical_cores) == (tuple(range(16, 32)) + tuple(range(48, 64)), 16)
    assert cpu.smt_siblings[0] == (0, 32) and len(cpu.smt_siblings) == 32
    assert "AMX" in cpu.native_bf16_reason


def test_container_usable_cores_follow_affinity_then_quota():
    cpu = machine("container-limited")
    assert cpu.usable_cpus == tuple(range(0, 8)) + tuple(range(32, 40))
    assert cpu.cpu_quota == 4.0
    assert cpu.usable_physical_cores == (0, 1, 2, 3)  # one per core, siblings 32-35 left out, cut to the quota


def test_affinity_holding_only_second_siblings_uses_them():
    cpu = hardware.CpuInfo(**{**vars(machine("xeon-1s-smt")), "affinity": frozenset({8, 9, 1})})
    assert cpu.usable_physical_cores == (8, 1)  # core 0 through its second thread, core 1 through its first


def test_hybrid_marks_e_cores_and_orders_p_cores_first():
    cpu = machine("i7-12700h-hybrid")
    assert cpu.hybrid
    assert [core.efficiency for core in cpu.cores] == [False] * 6 + [True] * 8
    assert cpu.smt_siblings == ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11))
    quota = hardware.CpuInfo(**{**vars(cpu), "cpu_quota": 3.0})
    assert quota.usable_physical_cores == (0, 2, 4)


def test_aarch64_without_model_name_or_socket_column():
    cpu = machine("graviton3-aarch64")
    assert cpu.smt_siblings == () and not cpu.hybrid
    assert "Arm" in cpu.native_bf16_reason
    assert {core.socket for core in cpu.cores} == {0}


def test_cpu_lists_round_trip():
    assert parse_cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert format_cpu_list({11, 0, 1, 2, 3, 8, 10}) == "0-3,8,10-11"
    assert parse_cpu_list("") == frozenset() and format_cpu_list([]) == ""


def test_cpu_max():
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("250000 100000") == 2.5


def test_topology_blank_core_column_makes_one_core_per_cpu():
    cores = parse_topology("# CPU,Core,Socket,Node\n0,,,\n1,,,\n")
    assert [(core.cpus, core.socket, core.node) for core in cores] == [((0,), 0, 0), ((1,), 0, 0)]


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_read_cpu_max_v2_takes_the_tightest_ancestor(tmp_path):
    _write(tmp_path / "cpu.max", "max 100000\n")  # the root has no quota
    _write(tmp_path / "kube/cpu.max", "200000 100000\n")
    _write(tmp_path / "kube/pod/cpu.max", "max 100000\n")
    assert hardware.read_cpu_max("0::/kube/pod\n", tmp_path) == "200000 100000\n"
    assert hardware.read_cpu_max("0::/\n", tmp_path) == "max 100000"


def test_read_cpu_max_v1_and_missing_namespaced_path(tmp_path):
    _write(tmp_path / "cpu,cpuacct/cpu.cfs_quota_us", "150000\n")
    _write(tmp_path / "cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    proc = "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n"
    assert parse_cpu_max(hardware.read_cpu_max(proc, tmp_path)) == 1.5
    _write(tmp_path / "cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    assert parse_cpu_max(hardware.read_cpu_max(proc, tmp_path)) is None


def test_read_memory_max_takes_the_tightest_limit_v1_and_v2(tmp_path):
    _write(tmp_path / "memory/memory.limit_in_bytes", "9223372036854771712\n")  # v1's "no limit"
    _write(tmp_path / "memory/docker/abc/memory.limit_in_bytes", f"{16 * 2**30}\n")
    proc = "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n"
    assert hardware.read_memory_max(proc, tmp_path) == str(16 * 2**30)
    assert hardware.read_memory_max("4:memory:/\n", tmp_path) == "max"
    _write(tmp_path / "kube/memory.max", f"{8 * 2**30}\n")
    _write(tmp_path / "kube/pod/memory.max", "max\n")
    assert hardware.read_memory_max("0::/kube/pod\n", tmp_path) == str(8 * 2**30)


@pytest.mark.parametrize("limit_gib, usable_gib, limited", [(None, 23.5, False), (16, 16, True), (64, 23.5, False)])
def test_memory_is_the_cgroup_limit_where_lower(limit_gib, usable_gib, limited):
    texts = machine_texts("epyc-2core-avx2")
    meminfo = "MemTotal:       24641536 kB\n"  # 23.5 GiB, as the development VMs
    limit = "max" if limit_gib is None else str(limit_gib * 2**30)
    cpu = hardware.from_texts(dataclasses.replace(texts, meminfo=meminfo, memory_max=limit))
    assert round(cpu.memory_bytes / 2**30, 1) == usable_gib
    assert (cpu.memory_limit is not None) == limited


def test_sysfs_topology_matches_lscpu_format(tmp_path):
    cpu_root = tmp_path / "devices/system/cpu"
    _write(cpu_root / "online", "0-3\n")
    for cpu, (core, socket) in enumerate([(0, 0), (0, 1), (0, 0), (0, 1)]):  # core_id repeats per socket
        _write(cpu_root / f"cpu{cpu}/topology/core_id", f"{core}\n")
        _write(cpu_root / f"cpu{cpu}/topology/physical_package_id", f"{socket}\n")
        (cpu_root / f"cpu{cpu}/node{socket}").mkdir()
    cores = parse_topology(hardware.sysfs_topology_text(tmp_path))
    assert [(core.cpus, core.socket, core.node) for core in cores] == [((0, 2), 0, 0), ((1, 3), 1, 1)]


def test_detect_reads_this_machine_without_assuming_it():
    cpu = hardware.detect()
    assert cpu.logical_cpus == os.cpu_count()
    assert set(cpu.usable_cpus) == os.sched_getaffinity(0)
    assert 1 <= len(cpu.usable_physical_cores) <= cpu.physical_cores
    assert cpu.memory_bytes > 2**28
    json.dumps(cpu.to_dict())
