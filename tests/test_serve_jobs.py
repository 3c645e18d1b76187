"""Interrupt and progress scoped to the caller's own job, against a live server on random:tiny: a task id
(force_task_id / id_task) names a job; without one, a client reaches the jobs its peer address sent without one (the
other client here sends from 127.0.0.2, another loopback address). Previews shared, decoded once per step."""

import base64
import concurrent.futures
import io
import json
import threading
import time

import httpx2 as httpx
import openai
import pytest
from PIL import Image

from serving import OTHER, InProcess, client

KEY = "jobs-key"
LONG = {"prompt": "x", "width": 64, "height": 64, "steps": 150, "seed": 4}


@pytest.fixture(scope="module")
def server(sdcpu_home):
    live = InProcess("--api-key", KEY)
    yield live
    assert live.stop() == 0


def size(b64: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(b64.split(",", 1)[-1]))).size


def wait_running(http: httpx.Client, pending: concurrent.futures.Future, step: int = 2) -> None:
    deadline = time.monotonic() + 30
    while http.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()["state"]["sampling_step"] < step:
        assert not pending.done(), pending.result()
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.02)


def test_interrupts_from_other_clients_cut_none_of_a_victims_answers(server):
    victim, oai = client(server), openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    body = {**LONG, "steps": 30, "force_task_id": "victim-task"}

    def victims():
        answer = oai.images.generate(prompt="x", size="64x64", extra_body={"steps": 30, "seed": 1})
        return json.loads(victim.post("/sdapi/v1/txt2img", json=body).json()["info"]), answer.model_extra["sdcpu"]

    hits = 0
    with client(server, OTHER) as other, client(server) as same, concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(victims)
        wait_running(same, pending, 1)
        while not pending.done():  # another peer without a task id or with another's; this peer with another's
            for http, sent in ((other, None), (other, {"id_task": "other-task"}), (same, {"id_task": "other-task"})):
                hits += http.post("/sdapi/v1/interrupt", json=sent).json()["interrupted"]
            time.sleep(0.1)
    assert hits == 0
    a1111, oai_info = pending.result()
    for info in (a1111, oai_info):  # PNDM runs one step more than asked
        assert info["steps_done"] >= 30 and not info["interrupted"], info


def test_a_job_is_interrupted_by_its_own_task_id_and_only_its_caller_sees_its_preview(server):
    mine = {"id_task": "mine-1"}
    with client(server) as same, client(server, OTHER) as other, concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert httpx.post(f"{server.url}/internal/progress", json=mine).status_code == 401
        pending = pool.submit(same.post, "/sdapi/v1/txt2img", json={**LONG, "force_task_id": "mine-1"})
        wait_running(same, pending)
        progress = other.post("/internal/progress", json=mine).json()  # the task id is the key to it
        assert progress["active"] and 0 < progress["progress"] < 1 and size(progress["live_preview"]) == (64, 64)
        again = other.post("/internal/progress", json={**mine, "id_live_preview": progress["id_live_preview"]}).json()
        assert again["live_preview"] is None or again["id_live_preview"] != progress["id_live_preview"]
        assert not other.post("/internal/progress", json={"id_task": "nobody"}).json()["active"]
        for http in (same, other):  # without its task id, no one sees its image: not even its own peer
            assert http.get("/sdapi/v1/progress").json()["current_image"] is None
        assert other.post("/sdapi/v1/interrupt", json=mine).json() == {"interrupted": True}
        stopped = pending.result()
        assert same.post("/internal/progress", json=mine).json()["completed"]
    info = json.loads(stopped.json()["info"])
    assert stopped.status_code == 200 and info["interrupted"] and info["steps_done"] < 150


def test_two_clients_progress_each_see_only_their_own_image(server):
    sizes = {"127.0.0.1": (64, 64), OTHER: (80, 64)}
    seen = {address: set() for address in sizes}
    done = threading.Event()

    def work(address):
        with client(server, address) as http:
            return http.post("/sdapi/v1/txt2img", json={**LONG, "steps": 25, "width": sizes[address][0]})

    def poll(address):
        with client(server, address) as http:
            while not done.is_set():
                if image := http.get("/sdapi/v1/progress").json()["current_image"]:
                    seen[address].add(size(image))
                time.sleep(0.02)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        pollers = [pool.submit(poll, address) for address in sizes]
        answers = [pool.submit(work, address) for address in sizes]
        assert all(answer.result().status_code == 200 for answer in answers)
        done.set()
        [poller.result() for poller in pollers]
    assert seen == {address: {own} for address, own in sizes.items()}


def test_an_interrupted_openai_request_is_not_a_200_and_its_stream_ends_with_an_error(server):
    oai = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    with client(server) as same, concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(oai.images.generate, prompt="x", size="64x64", extra_body={"steps": 150})
        wait_running(same, pending)
        assert same.post("/sdapi/v1/interrupt").json() == {"interrupted": True}
        with pytest.raises(openai.APIStatusError) as caught:
            pending.result()
        assert caught.value.status_code == 499 and caught.value.body["code"] == "interrupted"

        def stream():
            body = {"prompt": "x", "size": "64x64", "steps": 150, "stream": True}
            with same.stream("POST", "/v1/images/generations", json=body) as answer:
                return [json.loads(line[6:]) for line in answer.iter_lines() if line.startswith("data: ")]

        pending = pool.submit(stream)
        wait_running(same, pending)
        assert same.post("/sdapi/v1/interrupt").json() == {"interrupted": True}
        events = pending.result()
    assert [event["type"] for event in events] == ["error"] and events[0]["error"]["code"] == "interrupted"


def test_progress_previews_are_decoded_once_per_step_and_shared(server, monkeypatch):
    from sdcpu.serve import preview

    decodes, images = [], []
    decode = preview.Previewer.images
    monkeypatch.setattr(preview.Previewer, "images", lambda self, *args: decodes.append(1) or decode(self, *args))
    with client(server) as same, concurrent.futures.ThreadPoolExecutor(4) as pool:
        pending = pool.submit(same.post, "/sdapi/v1/txt2img", json={**LONG, "steps": 30})
        start = time.monotonic()

        def poll():
            with client(server) as http:
                while not pending.done():
                    if image := http.get("/sdapi/v1/progress").json()["current_image"]:
                        images.append(image)
                    time.sleep(0.01)

        [poller.result() for poller in [pool.submit(poll) for _ in range(3)]]
        seconds = time.monotonic() - start
        assert pending.result().status_code == 200
    assert images and len(decodes) < len(images), "the pollers share each decode"
    assert len(decodes) <= min(31, seconds / preview.PROGRESS_SECONDS + 1)


def test_a_task_id_names_one_job_in_flight_at_a_time(server):
    body = {**LONG, "force_task_id": "one-task"}
    with client(server) as same, client(server, OTHER) as other, concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(same.post, "/sdapi/v1/txt2img", json=body)
        wait_running(same, pending, 1)
        again = other.post("/sdapi/v1/txt2img", json={**body, "steps": 2})  # before: queued, both under one id
        assert again.status_code == 409 and "give each job its own task id" in again.json()["error"]["message"]
        assert other.post("/sdapi/v1/interrupt", json={"id_task": "one-task"}).json()["interrupted"]
        assert pending.result().status_code == 200
        assert other.post("/sdapi/v1/txt2img", json={**body, "steps": 2}).status_code == 200  # the id is free again
