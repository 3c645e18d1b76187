import dataclasses
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from machines import NAMES, machine
from serving import free_port
from sdcpu.errors import UsageError
from sdcpu.system import launcher
from sdcpu.system.launcher import auto_options, JEMALLOC_CONF, LaunchOptions, LaunchPlan, plan

LIBS = {"jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "tcmalloc": "/usr/lib/libtcmalloc_minimal.so.4",
        "iomp": "/venv/lib/libiomp5.so"}
NUMACTL = frozenset({"numactl", "taskset"})
SEED = LaunchOptions(allocator="jemalloc", openmp="iomp", pin=True)
DOCS = Path(__file__).parents[1] / "docs" / "launcher.md"


@pytest.mark.parametrize("name", NAMES)
def test_default_options_set_only_threads_to_usable_physical_cores(name):
    cpu = machine(name)
    (only,) = plan(cpu, LaunchOptions(), {}, LIBS)
    assert only.env == {"OMP_NUM_THREADS": str(len(cpu.usable_physical_cores))}
    assert only.argv_prefix == () and only.missing == ()
    assert only.notes[0].startswith(f"{len(cpu.usable_physical_cores)} usable physical cores")


def test_seed_settings_on_two_socket_sapphire_rapids():
    (only,) = plan(machine("spr-2s-amx"), SEED, {}, LIBS, NUMACTL)
    assert only.env["LD_PRELOAD"] == f"{LIBS['jemalloc']}:{LIBS['iomp']}"
    assert only.env["MALLOC_CONF"] == JEMALLOC_CONF == (
        "oversize_threshold:1,background_thread:true,metadata_thp:auto,dirty_decay_ms:60000,muzzy_decay_ms:60000")
    assert only.env["OMP_NUM_THREADS"] == "32"
    assert only.env["KMP_AFFINITY"] == "granularity=fine,compact,1,0" and only.env["KMP_BLOCKTIME"] == "1"
    assert only.env["SDCPU_LAUNCH_LIBRARIES"] == "jemalloc,iomp" and only.env["SDCPU_LAUNCH_CPUS"] == "0-31"
    assert only.argv_prefix == ("numactl", "-C", "0-31", "-m", "0,1")
    assert "SDCPU_INSTANCE" not in only.env and "OMP_PROC_BIND" not in only.env


def test_instances_split_cores_by_numa_node_each_with_its_own_env():
    first, second = plan(machine("spr-2s-amx"), dataclasses.replace(SEED, instances=2), {}, LIBS, NUMACTL)
    assert first.argv_prefix == ("numactl", "-C", "0-15", "-m", "0")
    assert second.argv_prefix == ("numactl", "-C", "16-31", "-m", "1")
    assert (first.env["OMP_NUM_THREADS"], second.env["OMP_NUM_THREADS"]) == ("16", "16")
    assert (first.env["SDCPU_INSTANCE"], second.env["SDCPU_INSTANCE"]) == ("0", "1")
    assert (first.cpus, second.cpus) == (tuple(range(16)), tuple(range(16, 32)))


def test_smt_box_pins_one_logical_cpu_per_core():
    (only,) = plan(machine("xeon-1s-smt"), SEED, {}, LIBS, NUMACTL)
    assert only.argv_prefix == ("numactl", "-C", "0-7", "-m", "0") and only.env["OMP_NUM_THREADS"] == "8"
    assert "SMT siblings left idle" in only.notes[0]


def test_container_plans_within_affinity_and_quota():
    a, b = plan(machine("container-limited"), dataclasses.replace(SEED, instances=2), {}, LIBS, NUMACTL)
    assert (a.argv_prefix[2], b.argv_prefix[2]) == ("0-1", "2-3")
    assert a.env["OMP_NUM_THREADS"] == "2"
    assert "affinity mask 0-7,32-39" in a.notes[0] and "cgroup quota 4 CPUs" in a.notes[0]


def test_two_instances_on_the_two_core_box_get_different_cores():
    plans = plan(machine("epyc-2core-avx2"), LaunchOptions(pin=True, instances=2), {}, {}, NUMACTL)
    assert [p.argv_prefix for p in plans] == [("numactl", "-C", "0", "-m", "0"), ("numactl", "-C", "1", "-m", "0")]
    assert [p.env["OMP_NUM_THREADS"] for p in plans] == ["1", "1"]


def test_taskset_when_numactl_fails_and_a_note_when_nothing_pins():
    cpu = machine("epyc-2core-avx2")
    (with_taskset,) = plan(cpu, LaunchOptions(pin=True), {}, {}, frozenset({"taskset"}))
    assert with_taskset.argv_prefix == ("taskset", "-c", "0-1") and with_taskset.missing == ()
    (bare,) = plan(cpu, LaunchOptions(pin=True), {}, {}, frozenset())
    assert bare.argv_prefix == () and bare.missing == ("pin",)
    assert any("neither numactl nor taskset" in note for note in bare.notes)
    assert bare.env["SDCPU_LAUNCH_CPUS"] == "0-1"  # so --verify reports the unpinned child


def test_user_variables_are_kept_and_said():
    environ = {"OMP_NUM_THREADS": "7", "MALLOC_CONF": "narenas:1", "KMP_BLOCKTIME": "1"}
    (only,) = plan(machine("spr-2s-amx"), SEED, environ, LIBS, NUMACTL)
    assert not {"OMP_NUM_THREADS", "MALLOC_CONF", "KMP_BLOCKTIME"} & set(only.env)
    assert only.kept == environ
    assert any(note.startswith("OMP_NUM_THREADS=7 kept") for note in only.notes)
    assert any(note.startswith("MALLOC_CONF=narenas:1 kept") for note in only.notes)
    assert not any(note.startswith("KMP_BLOCKTIME") for note in only.notes)  # same value: nothing to say
    assert only.environ(environ)["OMP_NUM_THREADS"] == "7"


def test_user_ld_preload_stays_first_and_blocks_a_second_allocator():
    (extra,) = plan(machine("spr-2s-amx"), SEED, {"LD_PRELOAD": "/opt/libfoo.so"}, LIBS, NUMACTL)
    assert extra.env["LD_PRELOAD"] == f"/opt/libfoo.so:{LIBS['jemalloc']}:{LIBS['iomp']}"
    assert any("your entries kept first" in note for note in extra.notes)
    (clash,) = plan(machine("spr-2s-amx"), SEED, {"LD_PRELOAD": "/x/libtcmalloc.so.4"}, LIBS, NUMACTL)
    assert clash.env["LD_PRELOAD"] == f"/x/libtcmalloc.so.4:{LIBS['iomp']}"
    assert "MALLOC_CONF" not in clash.env and clash.missing == ("jemalloc",)
    assert clash.env["SDCPU_LAUNCH_LIBRARIES"] == "jemalloc,iomp"  # still asked: --verify will fail on it
    (same,) = plan(machine("spr-2s-amx"), SEED, {"LD_PRELOAD": "/mine/libiomp5.so"}, LIBS, NUMACTL)
    assert same.env["LD_PRELOAD"] == f"/mine/libiomp5.so:{LIBS['jemalloc']}" and same.missing == ()


def test_missing_libraries_are_notes_not_crashes():
    (only,) = plan(machine("epyc-2core-avx2"), SEED, {}, {"iomp": None}, NUMACTL)
    assert "LD_PRELOAD" not in only.env and "MALLOC_CONF" not in only.env
    assert only.missing == ("jemalloc", "iomp")
    assert any(note.startswith("jemalloc: none of libjemalloc.so.2") for note in only.notes)


def test_tcmalloc_and_gomp():
    (only,) = plan(machine("xeon-1s-smt"), LaunchOptions("tcmalloc", "gomp", pin=True), {}, LIBS, NUMACTL)
    assert only.env["LD_PRELOAD"] == LIBS["tcmalloc"] and "MALLOC_CONF" not in only.env
    assert (only.env["OMP_PROC_BIND"], only.env["OMP_PLACES"]) == ("close", "cores")
    assert only.env["SDCPU_LAUNCH_LIBRARIES"] == "tcmalloc" and "KMP_BLOCKTIME" not in only.env


def test_unbound_threads_stay_pinned_without_openmp_binding():
    for openmp in ("iomp", "gomp"):
        (only,) = plan(machine("spr-2s-amx"), LaunchOptions("default", openmp, pin=True, bind_threads=False), {}, LIBS,
                       NUMACTL)
        assert only.argv_prefix == ("numactl", "-C", "0-31", "-m", "0,1")
        assert not {"KMP_AFFINITY", "OMP_PROC_BIND", "OMP_PLACES"} & set(only.env)
    assert plan(machine("spr-2s-amx"), LaunchOptions("default", "iomp", pin=True), {}, LIBS, NUMACTL)[0].env[
        "KMP_AFFINITY"]


def test_thread_counts_and_oversubscription():
    cpu = machine("epyc-2core-avx2")
    (one,) = plan(cpu, LaunchOptions(threads=1, pin=True), {}, {}, NUMACTL)
    assert one.env["OMP_NUM_THREADS"] == "1" and one.argv_prefix[2] == "0"  # pinned to as many cores as threads
    many = plan(cpu, LaunchOptions(threads=2, instances=2), {}, {})
    assert [p.env["OMP_NUM_THREADS"] for p in many] == ["2", "2"] and any("oversubscribe" in n for n in many[0].notes)
    with pytest.raises(UsageError, match=r"threads=4: more than the 2 CPUs this process may use"):
        plan(cpu, LaunchOptions(threads=4), {}, {})  # more OpenMP threads than CPUs: never faster (issue 18)
    unpinned = plan(cpu, LaunchOptions(instances=3), {}, {})
    assert [p.env["OMP_NUM_THREADS"] for p in unpinned] == ["1"] * 3
    with pytest.raises(UsageError, match="3 pinned instances need 3"):
        plan(cpu, LaunchOptions(pin=True, instances=3), {}, {}, NUMACTL)


def test_hybrid_laptop_note_names_the_p_cores():
    (only,) = plan(machine("i7-12700h-hybrid"), LaunchOptions(), {}, {})
    assert only.env["OMP_NUM_THREADS"] == "14"
    assert any("--threads 6" in note for note in only.notes)


@pytest.mark.parametrize("bad", [dict(allocator="mimalloc"), dict(openmp="default"), dict(threads=0), dict(instances=0)])
def test_options_refuse_bad_values(bad):
    with pytest.raises(UsageError):
        LaunchOptions(**bad)


def test_auto_options_follow_what_is_there():
    options, reasons = auto_options(machine("spr-2s-amx"), LIBS, NUMACTL)
    assert options == LaunchOptions("jemalloc", "iomp", None, True, 1) and len(reasons) == 4
    options, reasons = auto_options(machine("epyc-2core-avx2"), {"tcmalloc": LIBS["tcmalloc"]}, frozenset())
    assert options == LaunchOptions("tcmalloc", None, None, False, 1)
    assert any("intel-openmp" in r for r in reasons) and any("neither numactl" in r for r in reasons)
    options, reasons = auto_options(machine("graviton3-aarch64"), {"iomp": LIBS["iomp"]}, NUMACTL)
    assert options.openmp is None and options.allocator == "default" and any("x86-only" in r for r in reasons)


def test_auto_does_not_pin_when_only_a_quota_limits_the_process():
    cpu = dataclasses.replace(machine("xeon-1s-smt"), cpu_quota=2.0)
    options, reasons = auto_options(cpu, LIBS, NUMACTL)
    assert not options.pin and any("only a cgroup quota" in r for r in reasons)


def test_format_plan_is_a_shell_line_plus_a_row_per_variable():
    (only,) = plan(machine("spr-2s-amx"), SEED, {"OMP_NUM_THREADS": "8"}, LIBS, NUMACTL)
    text = launcher.format_plan(only, ["python", "run me.py"])
    line = shlex.split(text.splitlines()[0])
    assert line[-7:] == ["numactl", "-C", "0-31", "-m", "0,1", "python", "run me.py"]
    assert f"MALLOC_CONF={JEMALLOC_CONF}" in line
    for name in [*only.env, "OMP_NUM_THREADS"]:
        assert any(row.startswith(f"| {name} |") for row in text.splitlines())
    assert "| OMP_NUM_THREADS | `8` (yours, kept) |" in text


def test_every_variable_a_plan_sets_is_documented():
    options = [SEED, LaunchOptions("tcmalloc", "gomp", pin=True, instances=2)]
    names = {name for o in options for p in plan(machine("spr-2s-amx"), o, {}, LIBS, NUMACTL) for name in p.env}
    assert names == {var.name for var in launcher.ENV_VARS}


def test_docs_table_matches_the_code():
    assert launcher.env_table_markdown() in DOCS.read_text(), (
        "docs/launcher.md is stale: paste the output of "
        "python -c 'from sdcpu.system.launcher import env_table_markdown; print(env_table_markdown())'")


def test_library_kind():
    assert launcher.library_kind("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10") == "tcmalloc"
    assert launcher.library_kind("/v/torch/lib/libgomp-a34b3233.so.1") == "gomp"
    assert launcher.library_kind("libiomp5.so") == "iomp"
    assert launcher.library_kind("/lib/libjemallocator.so") is None and launcher.library_kind("libc.so.6") is None


def test_find_libraries_takes_the_first_dir_and_the_best_name(tmp_path):
    venv, system = tmp_path / "venv/lib", tmp_path / "usr/lib"
    for path in (venv / "libiomp5.so", system / "libiomp5.so", system / "libtcmalloc.so.4",
                 system / "libtcmalloc_minimal.so.4"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    assert launcher.find_libraries([venv, system]) == {
        "iomp": str(venv / "libiomp5.so"), "tcmalloc": str(system / "libtcmalloc_minimal.so.4")}


def test_library_dirs_cover_venv_multiarch_and_local():
    dirs = launcher.library_dirs({"VIRTUAL_ENV": "/v", "CONDA_PREFIX": "/c"})
    assert dirs[0] == Path("/v/lib") and Path(sys.prefix) / "lib" in dirs and Path("/c/lib") in dirs
    assert Path("/usr/local/lib") in dirs and any(d.name.endswith("-linux-gnu") for d in dirs)


def test_this_machine_finds_the_installed_libraries():
    found = launcher.find_libraries(launcher.library_dirs({}))
    for kind, path in [("jemalloc", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
                       ("tcmalloc", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"),
                       ("iomp", f"{sys.prefix}/lib/libiomp5.so")]:
        if not Path(path).exists():
            pytest.skip(f"{path} is not installed here")
        assert found[kind] == path


def test_probe_pinning_tools_runs_them():
    from sdcpu.system.hardware import detect

    tools = launcher.probe_pinning_tools(detect())
    assert tools <= {"numactl", "taskset"}
    expected = subprocess.run(["sh", "-c", "command -v taskset && taskset -c 0 true"], capture_output=True).returncode
    assert ("taskset" in tools) == (expected == 0)


def test_apply_execs_with_the_plan_env():
    code = ("from sdcpu.system.launcher import LaunchPlan, apply; "
            "apply(LaunchPlan({'SDCPU_X': 'from-plan'}, (), ()), ['sh', '-c', 'echo $SDCPU_X $KEEP'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"KEEP": "kept", "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["from-plan", "kept"]


def test_plan_environ_overlays_the_base():
    p = LaunchPlan({"A": "1"}, (), ())
    assert p.environ({"A": "0", "B": "2"}) == {"A": "1", "B": "2"}


def test_jemalloc_default_preloads_jemalloc_without_the_seeds_malloc_conf():
    from sdcpu import recipes

    options = recipes.launch_options(recipes.parse("jemalloc=default"))
    (only,) = plan(machine("epyc-2core-avx2"), options, {}, LIBS)
    assert only.env["LD_PRELOAD"] == LIBS["jemalloc"] and "MALLOC_CONF" not in only.env
    (seed,) = plan(machine("epyc-2core-avx2"), recipes.launch_options(recipes.parse("jemalloc")), {}, LIBS)
    assert seed.env["MALLOC_CONF"] == JEMALLOC_CONF
    with pytest.raises(UsageError, match="expected `default`"):
        recipes.parse("jemalloc=fast")


HOSTILE = "import pathlib; pathlib.Path(__file__).with_name('imported').touch()\n"


@pytest.fixture
def hostile_folder(tmp_path, monkeypatch):
    """The folder a user runs sdcpu from, holding a json.py that marks the folder when it is imported."""
    (tmp_path / "json.py").write_text(HOSTILE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_children_do_not_import_modules_from_the_current_folder(hostile_folder, monkeypatch):
    from sdcpu import recipes
    from sdcpu.recipes import relaunch
    from sdcpu.system import hardware

    cpu = hardware.detect()
    measuring, env, _ = relaunch.child_command(recipes.parse("baseline"), cpu, dict(os.environ), "sdcpu.system.verify", {})
    started = []
    monkeypatch.setattr(launcher, "apply", lambda plan, argv, environ: started.append(argv))
    monkeypatch.setattr(sys, "argv", ["sdcpu", "--help"])
    relaunch.under_plan(recipes.parse("threads=1"), cpu, environ={})
    for argv in (measuring[:-1], started[0]):  # the measuring child's JSON spec is not what sdcpu.system.verify reads
        done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=hostile_folder, timeout=120)
        assert done.returncode == 0, done.stderr
        assert not (hostile_folder / "imported").exists(), f"{argv} imported ./json.py"


def test_serve_instances_do_not_import_modules_from_the_current_folder(hostile_folder, monkeypatch):
    """The copies `sdcpu serve --instances N` starts (the one Python child not made by launcher.python_module, whose
    children the test above runs) keep the current folder off sys.path too."""
    from types import SimpleNamespace

    from sdcpu import recipes
    from sdcpu.commands import serve

    started = []
    monkeypatch.setattr(serve, "run_instances", lambda plans, argv, environ: started.append((argv, environ)) or 0)
    monkeypatch.setattr(sys, "argv", ["sdcpu", "--help"])
    args = SimpleNamespace(host="127.0.0.1", port=free_port(), instances=2)
    assert serve._run_instances(args, recipes.parse("baseline"), machine("spr-2s-amx")) == 0
    (argv, env), = started
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=hostile_folder, timeout=120)
    assert done.returncode == 0 and "usage: sdcpu" in done.stdout, done.stderr
    assert not (hostile_folder / "imported").exists(), f"{argv} imported ./json.py"
