"""A local Ray cluster for the Ray tests (`batch --ray`, `serve --ray`): a process that owns a 2-CPU Ray started by
ray.init; its raylet and every worker it starts inherit that process's environment (the tests' SDCPU_HOME, sdcpu on
PYTHONPATH, MARK to find them by). Closing its stdin shuts that Ray down, and only it.

Ray 2.60's token authentication is on for a ray.init cluster, and a driver given an address uses it only where told
(RAY_AUTH_MODE=token; the token is in ~/.ray/auth_token), read when ray is first imported: conftest.py sets it before
any test module is imported, as a user joining a cluster does before starting Python."""

import contextlib
import importlib.util
import os
import subprocess
import sys
import uuid

import pytest

from serving import SRC

OWNER = """import sys, ray
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
ray.shutdown()
"""
MARK = "SDCPU_TEST_RAY_CLUSTER"


@contextlib.contextmanager
def local_cluster():
    """(its address, the MARK value its processes carry)."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("the ray extra is not installed")
    assert os.environ.get("RAY_AUTH_MODE") == "token", "conftest.py sets it before ray is imported"
    token = uuid.uuid4().hex
    env = {**os.environ, MARK: token, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    owner = subprocess.Popen([sys.executable, "-c", OWNER], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    address = owner.stdout.readline().strip()
    assert address, "the Ray cluster did not start"
    try:
        yield address, token
    finally:
        owner.stdin.close()
        assert owner.wait(timeout=60) == 0
