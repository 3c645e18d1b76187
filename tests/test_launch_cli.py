"""`sdcpu launch` for real: children are started, pinned and inspected (a few seconds each)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sdcpu.cli import main
from sdcpu.system import launcher

LIBS = launcher.find_libraries(launcher.library_dirs(os.environ))
# one write() per child: two instances share the pipe, and print() may split a line into two writes
REPORT = ("import json, os; os.write(1, (json.dumps([os.environ.get('SDCPU_INSTANCE'), "
          "sorted(os.sched_getaffinity(0))]) + '\\n').encode())")


@pytest.fixture(autouse=True)
def no_thread_count(monkeypatch):
    """The launcher keeps a caller's OMP_NUM_THREADS: these tests check its own choice (the suite's workers set one)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def sdcpu(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "sdcpu", *args], capture_output=True, text=True, timeout=120, **kwargs)


def need(*kinds):
    missing = [kind for kind in kinds if kind not in LIBS]
    if missing:
        pytest.skip(f"not installed here: {', '.join(missing)}")


@pytest.mark.parametrize("argv", [["launch", "--no-pin", "--", "true"], ["launch", "--threads", "0", "--", "true"],
                                  ["launch", "--allocator", "mimalloc", "--", "true"], ["launch"]])
def test_bad_command_lines_are_one_line_exit_2(argv):
    result = sdcpu(*argv)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_dry_run_prints_the_plan_without_running(capsys):
    assert main(["launch", "--auto", "--dry-run", "--", "python", "x.py"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith("python x.py") and "| OMP_NUM_THREADS |" in out


def test_explicit_options_override_auto(capsys):
    assert main(["launch", "--auto", "--openmp", "default", "--allocator", "default", "--threads", "1", "--dry-run"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert "OMP_NUM_THREADS=1" in line and "LD_PRELOAD" not in line and "KMP_" not in line


# A thread started after torch's first parallel region: the CPUs it may run on (OpenVINO's pool starts this way).
LATE_THREAD = ("import os, threading, torch; torch.randn(512, 512) @ torch.randn(512, 512); seen = []; "
               "t = threading.Thread(target=lambda: seen.append(len(os.sched_getaffinity(0)))); t.start(); t.join(); "
               "print(seen[0], len(os.sched_getaffinity(0)))")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_bound_openmp_confines_later_threads_to_one_core_and_no_bind_does_not():
    need("iomp")
    bound = sdcpu("launch", "--openmp", "iomp", "--pin", "--", sys.executable, "-c", LATE_THREAD)
    unbound = sdcpu("launch", "--openmp", "iomp", "--pin", "--no-bind", "--", sys.executable, "-c", LATE_THREAD)
    assert bound.returncode == unbound.returncode == 0, bound.stderr + unbound.stderr
    late, pinned = map(int, unbound.stdout.split())
    assert late == pinned >= 2  # every pinned core
    assert bound.stdout.split()[0] == "1"  # the main thread's bound core only: why openvino recipes do not bind


def test_dry_run_of_instances_has_one_block_each(capsys):
    assert main(["launch", "--pin", "--instances", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# instance 0" in out and "# instance 1" in out and "SDCPU_INSTANCE=1" in out


def test_verify_proves_jemalloc_and_iomp_are_mapped():
    need("jemalloc", "iomp")
    result = sdcpu("launch", "--allocator", "jemalloc", "--openmp", "iomp", "--pin", "--verify")
    assert result.returncode == 0, result.stdout + result.stderr
    first = result.stdout.splitlines()[0]
    assert "libjemalloc" in first and "libiomp5" in first and result.stdout.splitlines()[1] == "  OK"


def test_verify_proves_tcmalloc_is_mapped():
    need("tcmalloc")
    result = sdcpu("launch", "--allocator", "tcmalloc", "--threads", "1", "--verify")
    assert result.returncode == 0 and "libtcmalloc" in result.stdout and "torch threads 1" in result.stdout


def test_verify_fails_when_an_asked_library_is_not_mapped():
    need("jemalloc", "tcmalloc")
    env = {**os.environ, "LD_PRELOAD": LIBS["tcmalloc"]}  # the user's allocator wins, so jemalloc is not loaded
    result = sdcpu("launch", "--allocator", "jemalloc", "--verify", env=env)
    assert result.returncode == 1
    assert "FAIL jemalloc was asked for but no libjemalloc* library is mapped" in result.stdout


def test_single_instance_execs_the_command_with_the_plan():
    need("jemalloc")
    code = "import sys; sys.exit(3 if 'libjemalloc' in open('/proc/self/maps').read() else 4)"
    result = sdcpu("launch", "--allocator", "jemalloc", "--threads", "1", "--", sys.executable, "-c", code)
    assert result.returncode == 3, result.stderr


def test_two_instances_on_this_box_run_on_different_cores():
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("needs 2 usable CPUs")
    result = sdcpu("launch", "--pin", "--instances", "2", "--", sys.executable, "-c", REPORT)
    assert result.returncode == 0, result.stderr
    rows = sorted(json.loads(line) for line in result.stdout.splitlines())
    assert [index for index, _ in rows] == ["0", "1"]
    (a, b) = (set(cpus) for _, cpus in rows)
    assert len(a) == len(b) == 1 and not a & b


def test_instances_fail_if_any_fails():
    code = "import os, sys; sys.exit(int(os.environ['SDCPU_INSTANCE']) * 5)"
    result = sdcpu("launch", "--instances", "2", "--", sys.executable, "-c", code)
    assert result.returncode == 5 and "instance 1 exited with 5" in result.stderr


def test_a_missing_program_is_a_usage_error():
    for instances in ("1", "2"):
        result = sdcpu("launch", "--instances", instances, "--", "no-such-program-sdcpu")
        assert result.returncode == 2 and "cannot run no-such-program-sdcpu" in result.stderr


def test_signals_are_forwarded_to_every_instance():
    child = ("import os, signal, sys, time; "
             "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7)); "
             "os.write(1, b'ready '); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-m", "sdcpu", "launch", "--instances", "2", "--", sys.executable, "-c",
                               child], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert parent.stdout.read(12) == b"ready ready "  # both children are up and have their handler
    finally:
        parent.send_signal(signal.SIGTERM)  # the children sit in their own process group: only the forwarder reaches them
    assert parent.wait(timeout=30) == 7
    assert b"instance 0 exited with 7" in parent.stderr.read()


def test_instances_die_with_a_killed_supervisor(tmp_path):
    """SIGKILL leaves no chance to forward anything: the copies go through the parent-death signal. Each writes its pid
    and sleeps; after the supervisor is killed, each must be gone within 30 s (it exits at once on SIGTERM: the bound is
    for a loaded machine, not a speed)."""
    code = ("import os, sys, time; open(os.path.join(sys.argv[1], str(os.getpid())), 'w').close(); time.sleep(300)")
    supervisor = subprocess.Popen([sys.executable, "-m", "sdcpu", "launch", "--instances", "2", "--",
                                   sys.executable, "-c", code, str(tmp_path)])
    deadline = time.monotonic() + 60
    while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = [int(path.name) for path in tmp_path.iterdir()]
    assert len(pids) == 2
    supervisor.kill()
    supervisor.wait()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not open(f"/proc/{pid}/stat").read().split(") ")[1].startswith("Z")  # a zombie has exited
