import copy
import importlib.util
import os

import pytest

# A test never reaches the network, wherever it runs. Set before any test module imports huggingface_hub (at
# collection, through diffusers), which reads this once at import: set later, it would leave the hub online, and a
# test asking for a model it does not have would try the network (23 s of retries in test_algorithms' tiny-vae
# refusal).
os.environ["HF_HUB_OFFLINE"] = "1"
# Ray reads this once too, when first imported, and a test file may import it (through sdcpu) before another's local
# cluster starts: its drivers join that cluster with token authentication (tests/raycluster.py).
os.environ["RAY_AUTH_MODE"] = "token"
# pytest-xdist's workers share the machine's cores: each (and every process it starts) gets its share of OpenMP
# threads, unless the caller set a count. OpenMP's default is a thread per core in every process, and two workers'
# spinning thread teams on 2 cores ran the fast suite in 8:43 where one thread each ran it in 6:22 (2-core Zen 3).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    share = len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, share)))


@pytest.fixture(scope="session", autouse=True)
def sdcpu_home(tmp_path_factory):
    """Every test builds and caches models in a fresh SDCPU_HOME, never in the user's cache. pytest-xdist's workers
    share the run's one, as sdcpu's processes on one machine do: its locks make each model and IR once (a test that
    must see a first build or conversion makes its own home)."""
    root = tmp_path_factory.getbasetemp()
    home = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "sdcpu-home"
    home.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SDCPU_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def tiny(sdcpu_home):
    """tiny(): a fresh random:tiny pipeline, as `load_pipeline("random:tiny")` gives it, independent of every other
    (its weights, scheduler, tokenizer and sdcpu's state on it are its own: a test may optimize it, give it LoRAs or
    swap its parts). Each is a deep copy of one loaded once in the session's SDCPU_HOME, which never leaves here: a
    copy takes about 0.4 s where a load takes 0.6 s, and reads nothing from disk. A test about loading itself calls
    `load_pipeline`."""
    from sdcpu import load_pipeline

    pristine = load_pipeline("random:tiny")
    return lambda: copy.deepcopy(pristine)


@pytest.fixture(scope="module")
def server(sdcpu_home):
    """A live service of `sdcpu serve` on random:tiny with its default options, in this process, one per test module
    (a module needing options defines its own `server`)."""
    from serving import InProcess

    live = InProcess()
    yield live
    assert live.stop() == 0


@pytest.fixture
def installed(monkeypatch):
    """installed(*modules): only these of openvino and nncf can be imported (auto's rules read what is installed)."""
    find_spec = importlib.util.find_spec

    def only(*modules):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name: (
            None if name in ("openvino", "nncf") and name not in modules else find_spec(name)))
    return only
