"""`sdcpu serve --ray` on a local Ray cluster this module starts (2 CPUs, stopped at the end): the real command in a
subprocess joins it with 2 replicas x 1 core, answered by the real openai client, A1111 over httpx and a stream
through Ray's proxy; the API key and the Host guard hold; a full system answers sdcpu's 503 with Retry-After;
SIGTERM drains the request in flight, exits 0 and removes the application. The command line's checks are fast."""

import concurrent.futures
import json
import signal
import subprocess
import sys
import time

import httpx2 as httpx
import openai
import pytest

import serving
from raycluster import local_cluster
from serving import Server, free_port
from sdcpu.cli import main
from test_serve import AUTH, KEY, TINY, png

SLOW = {"prompt": "x", "width": 128, "height": 128, "steps": 30}  # seconds on one core, long enough to overlap
APPS = "import ray, sys; from ray import serve; ray.init(address=sys.argv[1]); print(sorted(serve.status().applications))"


@pytest.fixture(scope="module")
def cluster(sdcpu_home):
    """A local Ray (tests/raycluster.py)'s address."""
    with local_cluster() as (address, _):
        yield address


@pytest.fixture(scope="module")
def server(cluster, sdcpu_home):
    # --drain-seconds well above SLOW's seconds on a busy machine: the SIGTERM test checks that a drain lets the request
    # finish, not how long one takes (at the default 30 s, one in a slow-suite run beside inductor compiles was cut: 500)
    live = Server("--ray", cluster, "--replicas", "2", "--cores-per-replica", "1", "--max-queue", "1",
                  "--drain-seconds", "180", "--api-key", KEY, home=sdcpu_home, port=free_port())
    yield live
    live.stop()


def applications(address: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", APPS, address], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"'))


@pytest.mark.slow  # Ray Serve deploys two replicas, each loading its model: a minute or more on 2 cores
def test_both_apis_and_a_stream_through_rays_proxy(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    answer = client.images.generate(prompt="a red boat", n=2, size="80x64", response_format="b64_json",
                                    extra_body={"steps": 2, "seed": 5})
    assert [png(item.b64_json).size for item in answer.data] == [(80, 64), (80, 64)]
    assert "Seed: 6, Size: 80x64" in png(answer.data[1].b64_json).text["parameters"]
    events = list(client.images.generate(prompt="a boat", size="64x64", stream=True, partial_images=2,
                                         extra_body={"steps": 4}))
    assert [event.type for event in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    a1111 = httpx.post(f"{server.url}/sdapi/v1/txt2img", json={"prompt": "a lighthouse", **TINY, "seed": 7},
                       headers=AUTH, timeout=120)
    assert a1111.status_code == 200 and json.loads(a1111.json()["info"])["all_seeds"] == [7]
    pids, deadline = set(), time.monotonic() + 120
    while len(pids) < 2:  # Ray's router spreads requests over both replicas, each its own process
        assert time.monotonic() < deadline, f"only replica(s) {pids} answered ready"
        health = httpx.get(f"{server.url}/health", headers=AUTH)
        if health.status_code == 200:
            pids.add(health.json()["pid"])
    assert server.proc.pid not in pids


@pytest.mark.slow  # Ray Serve deploys two replicas, each loading its model: a minute or more on 2 cores
def test_the_key_the_host_guard_and_the_body_limit_hold(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        answer = httpx.post(f"{server.url}/sdapi/v1/txt2img", json={"prompt": "x"}, headers=headers)
        assert answer.status_code == 401 and "API key" in answer.json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong").images.generate(prompt="x")
    assert httpx.get(f"{server.url}/metrics", headers=AUTH).status_code == 200
    assert httpx.get(f"{server.url}/health", headers={"Host": "rebound.example"}).status_code == 400
    huge = httpx.post(f"{server.url}/v1/images/generations", content=b"{" + b" " * (2 << 20) + b"}", headers=AUTH)
    assert huge.status_code == 413 and huge.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.slow  # Ray Serve deploys two replicas, each loading its model: a minute or more on 2 cores
def test_a_full_system_answers_sdcpus_503_with_retry_after(server):
    # 2 replicas, each 1 running + 1 waiting (--max-queue 1): of 8 at once, at least 4 find every Worker full
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: httpx.post(f"{server.url}/sdapi/v1/txt2img", json=SLOW, headers=AUTH,
                                                     timeout=300), range(8)))
    statuses = sorted(answer.status_code for answer in answers)
    assert set(statuses) == {200, 503} and statuses.count(503) >= 4, statuses
    for answer in answers:
        if answer.status_code == 503:  # the replica's own answer, not Ray's plain-text back-pressure
            assert answer.json()["error"]["type"] == "server_busy" and int(answer.headers["Retry-After"]) >= 1


@pytest.mark.slow  # Ray Serve deploys two replicas, each loading its model: a minute or more on 2 cores
def test_sigterm_drains_the_request_in_flight_exits_0_and_removes_the_app(server, cluster):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, f"{server.url}/sdapi/v1/txt2img", json=SLOW, headers=AUTH, timeout=300)
        time.sleep(2.0)  # the request is running
        assert not pending.done(), f"it ended before the shutdown began: {pending.result().status_code} " \
                                   f"{pending.result().text[:200]}"
        server.proc.send_signal(signal.SIGTERM)
        answer = pending.result(timeout=300)
    assert answer.status_code == 200 and len(answer.json()["images"]) == 1
    assert server.proc.wait(timeout=120) == 0
    assert "sdcpu" not in applications(cluster)


@pytest.mark.parametrize("args, message", [
    (["--replicas", "2"], "--replicas needs --ray"),
    (["--ray", "--port", "0"], "--ray needs a fixed --port"),
    (["--ray", "--replicas", "0"], "--replicas must be at least 1"),
    (["--ray", "--replicas", "2", "--max-replicas", "3"], "give it, or --min-replicas/--max-replicas, not both"),
    (["--ray", "--min-replicas", "2"], "--min-replicas needs --max-replicas"),
    (["--ray", "--min-replicas", "3", "--max-replicas", "2"], "--max-replicas 2 is below --min-replicas 3"),
    (["--ray", "--instances", "2"], "with --ray, give --replicas"),
])
def test_bad_ray_options_are_one_line_and_exit_2(capsys, args, message):
    assert main(["serve", "--recipe", "baseline", "--model", "random:tiny", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_without_ray_one_line_names_the_install_command(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as where it is not installed
    monkeypatch.delitem(sys.modules, "sdcpu.serve.ray_deploy", raising=False)
    assert main(["serve", "--recipe", "baseline", "--model", "random:tiny", "--ray", "--port", "7000"]) == 2
    err = capsys.readouterr().err
    assert "pip install -e '.[ray]'" in err and len(err.strip().splitlines()) == 1, err



def test_a_replica_admits_more_than_its_worker_holds_so_the_worker_answers_503():
    from sdcpu.serve.ray_deploy import deployment_options, HEADROOM

    options = deployment_options(serving.options("--ray", "--max-queue", "3", "--max-batch", "2", "--max-replicas",
                                                 "4"), usable_cores=16)
    assert options["max_ongoing_requests"] == 2 + 3 + HEADROOM  # running + waiting, then the light routes
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2}
    assert options["ray_actor_options"] == {"num_cpus": 4}  # 16 cores / at most 4 replicas
    fixed = deployment_options(serving.options("--ray", "--replicas", "2", "--cores-per-replica", "3"), 16)
    assert fixed["num_replicas"] == 2 and fixed["ray_actor_options"] == {"num_cpus": 3}
