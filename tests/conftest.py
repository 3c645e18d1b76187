import pytest


@pytest.fixture(scope="session", autouse=True)
def sdcpu_home(tmp_path_factory):
    """Every test builds and caches models in a fresh SDCPU_HOME, never in the user's cache."""
    home = tmp_path_factory.mktemp("sdcpu-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SDCPU_HOME", str(home))
        mp.setenv("HF_HUB_OFFLINE", "1")  # a test never reaches the network, wherever it runs
        yield home


@pytest.fixture(scope="session")
def tiny_pipe(sdcpu_home):
    from sdcpu import load_pipeline

    return load_pipeline("random:tiny")


@pytest.fixture(scope="module")
def server(sdcpu_home):
    """A live `sdcpu serve` on random:tiny with its default options, one per test module (a module needing options
    defines its own `server`)."""
    from serving import Server

    live = Server(home=sdcpu_home)
    yield live
    assert live.stop() == 0
