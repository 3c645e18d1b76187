import os
import threading

import pytest
import torch

from sdcpu.system import verify

MAPS = """\
55d0c0a00000-55d0c0a28000 r--p 00000000 08:01 1234    /usr/bin/python3.11
7f1a00000000-7f1a00021000 rw-p 00000000 00:00 0
7f1a10000000-7f1a10040000 r-xp 00000000 08:01 42      /usr/lib/x86_64-linux-gnu/libjemalloc.so.2
7f1a10040000-7f1a10041000 r--p 00040000 08:01 42      /usr/lib/x86_64-linux-gnu/libjemalloc.so.2
7f1a20000000-7f1a20100000 r-xp 00000000 08:01 77      /venv/lib/libiomp5.so
7ffd0e9c0000-7ffd0e9e1000 rw-p 00000000 00:00 0       [stack]
"""
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


def _snap(**changes):
    snap = {
        "mapped": [JEMALLOC, "/venv/lib/libiomp5.so"],
        "preload": {"/lib/libjemalloc.so.2": JEMALLOC},
        "torch_threads": 2,
        "affinity": "0-1",
        "env": {"SDCPU_LAUNCH_LIBRARIES": "jemalloc,iomp", "OMP_NUM_THREADS": "2", "SDCPU_LAUNCH_CPUS": "0-1"},
    }
    return {**snap, **changes}


def test_mapped_paths_keeps_files_once_in_order():
    assert verify.mapped_paths(MAPS) == ("/usr/bin/python3.11", JEMALLOC, "/venv/lib/libiomp5.so")


def test_check_passes_when_everything_took_effect():
    assert verify.check(_snap()) == []


def test_check_reports_each_thing_that_did_not_take_effect():
    snap = _snap(mapped=[JEMALLOC], torch_threads=1, affinity="0-3",
                 preload={"/lib/libjemalloc.so.2": JEMALLOC, "/gone/libfoo.so": "/gone/libfoo.so"})
    failures = verify.check(snap)
    assert len(failures) == 4
    assert failures[0] == "iomp was asked for but no libiomp5* library is mapped"
    assert "/gone/libfoo.so" in failures[1]
    assert "torch uses 1 threads" in failures[2] and "affinity is 0-3" in failures[3]


def test_check_asks_nothing_of_a_plain_process():
    assert verify.check(_snap(env={}, preload={}, mapped=[])) == []


def test_snapshot_of_this_process():
    snap = verify.snapshot()
    assert snap["pid"] == os.getpid() and snap["torch_threads"] == torch.get_num_threads()
    assert snap["affinity"] == verify.format_cpu_list(os.sched_getaffinity(0))
    assert any(os.path.basename(path).startswith("libgomp") for path in snap["mapped"])  # torch's own OpenMP
    assert verify.describe(snap).startswith("mapped ")


def test_snapshot_affinity_is_the_union_of_thread_masks():
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        pytest.skip("needs 2 usable CPUs")
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()  # keeps the full mask while the main thread is bound to one CPU, as OpenMP binding does
    try:
        os.sched_setaffinity(0, {min(allowed)})
        assert verify.parse_cpu_list(verify.snapshot()["affinity"]) == allowed
    finally:
        os.sched_setaffinity(0, allowed)
        stop.set()
        worker.join()
