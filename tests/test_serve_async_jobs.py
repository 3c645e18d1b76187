"""The jobs API (/v1/jobs) against a live server on random:tiny (--max-queue 1: its admission is the synchronous
routes'): submit, status with queue position, step, ETA and preview, result, cancel, seen by two clients at once
(the second from 127.0.0.2, another loopback address); a job's id as A1111's id_task and a force_task_id as a job."""

import base64
import concurrent.futures
import io
import time
import types

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from serving import OTHER, InProcess, client, options

KEY = "async-jobs-key"
LONG = {"prompt": "x", "size": "64x64", "steps": 150, "seed": 4}


@pytest.fixture(scope="module")
def server(sdcpu_home):
    live = InProcess("--api-key", KEY, "--max-queue", "1")
    yield live
    assert live.stop() == 0


def size(b64: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(b64))).size


def until(http: httpx.Client, ident: str, done, timeout: float = 60) -> dict:
    """The job's status once DONE(status) holds (polled)."""
    deadline = time.monotonic() + timeout
    while not done(status := http.get(f"/v1/jobs/{ident}").json()):
        assert time.monotonic() < deadline, status
        time.sleep(0.02)
    return status


def submitted(http: httpx.Client, body: dict) -> str:
    answer = http.post("/v1/jobs", json=body)
    assert answer.status_code == 202, answer.text
    ident = answer.json()["id"]
    assert answer.headers["location"] == f"/v1/jobs/{ident}" and answer.json()["status"] == "queued"
    return ident


def test_a_job_runs_without_its_client_reports_its_steps_and_preview_and_gives_its_images(server):
    with client(server) as http:
        ident = submitted(http, {**LONG, "n": 2})  # 150 steps: seconds, long enough to watch it run
        running = until(http, ident, lambda s: s["status"] == "running" and s["step"] >= 2)
        assert running["steps"] == 151 and 0 < running["progress"] < 1 and running["eta_seconds"] > 0  # PNDM: +1
        shown = http.get(f"/v1/jobs/{ident}", params={"preview": True}).json()
        assert size(shown["preview"]) == (64, 64) and shown["preview_step"] >= 2
        assert running["preview"] is None  # only when asked: a decode per poll otherwise
        progress = http.post("/internal/progress", json={"id_task": ident}).json()  # the job's id is its task id
        assert progress["active"] and progress["progress"] > 0
        result = http.get(f"/v1/jobs/{ident}/result", params={"wait": 60})
        assert result.status_code == 200, result.text
        data = result.json()
        assert [size(item["b64_json"]) for item in data["data"]] == [(64, 64)] * 2
        assert data["sdcpu"]["steps_done"] == 151 and not data["sdcpu"]["interrupted"]
        final = http.get(f"/v1/jobs/{ident}").json()
        assert final["status"] == "succeeded" and final["expires_at"] - final["finished_at"] == 600


def test_two_clients_each_see_their_own_job_queued_then_running_and_a_cancel_frees_the_queue(server):
    with client(server) as first, client(server, OTHER) as second:
        assert first.get(f"/v1/jobs/{submitted(first, {**LONG, 'steps': 2})}/result", params={"wait": 60}).is_success
        ident = submitted(first, LONG)
        until(first, ident, lambda s: s["status"] == "running" and s["step"] >= 1)
        queued = submitted(second, {**LONG, "steps": 4})
        waiting = second.get(f"/v1/jobs/{queued}").json()
        assert waiting["status"] == "queued" and (waiting["queue_position"], waiting["queue_length"]) == (1, 1)
        assert waiting["eta_seconds"] > 0  # from the first job's seconds per pixel-step
        full = second.post("/v1/jobs", json=LONG)  # --max-queue 1: the synchronous routes' admission
        assert full.status_code == 503 and full.headers["retry-after"]
        mine = first.get(f"/v1/jobs/{ident}").json()
        assert mine["status"] == "running" and mine["steps"] == 151
        early = first.get(f"/v1/jobs/{ident}/result")
        assert early.status_code == 409 and early.json()["error"]["code"] == "job_not_finished"
        assert first.post(f"/v1/jobs/{ident}/cancel").json()["status"] == "cancelled"
        done = until(second, queued, lambda s: s["status"] == "succeeded")  # the queue moved on at the next step
        assert done["step"] == 5
        assert first.get(f"/v1/jobs/{ident}").json()["status"] == "cancelled"
        gone = first.get(f"/v1/jobs/{ident}/result")
        assert gone.status_code == 409 and "cancelled" in gone.json()["error"]["message"]


def test_a_queued_job_cancelled_leaves_the_queue_and_never_runs(server):
    with client(server) as http:
        running = submitted(http, LONG)
        until(http, running, lambda s: s["status"] == "running")
        queued = submitted(http, LONG)
        assert http.post(f"/v1/jobs/{queued}/cancel").json()["status"] == "cancelled"
        assert server.worker.depth() == 0
        http.post("/sdapi/v1/interrupt", json={"id_task": running})  # a job's id is its A1111 task id
        stopped = until(http, running, lambda s: s["status"] != "running")
        assert stopped["status"] == "interrupted" and stopped["step"] < 150
        partial = http.get(f"/v1/jobs/{running}/result").json()  # the images of the steps it had, as A1111 answers
        assert partial["sdcpu"]["interrupted"] and size(partial["data"][0]["b64_json"]) == (64, 64)
        assert http.get(f"/v1/jobs/{queued}").json()["status"] == "cancelled"


def test_a_synchronous_requests_task_id_is_reported_as_a_job(server):
    with client(server) as http, concurrent.futures.ThreadPoolExecutor(1) as pool:
        body = {"prompt": "x", "width": 64, "height": 64, "steps": 100, "force_task_id": "sync-task"}
        pending = pool.submit(http.post, "/sdapi/v1/txt2img", json=body)
        running = until(http, "sync-task", lambda s: s.get("status") == "running" and s["step"] >= 1)  # 404 until sent
        assert running["synchronous"] and running["steps"] == 101
        assert pending.result().status_code == 200
        for path in ("/v1/jobs/sync-task", "/v1/jobs/sync-task/result"):  # its images went to its caller
            assert http.get(path).status_code == 404


def test_an_edit_job_takes_the_edits_form(server):
    image = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(image, format="PNG")
    with client(server) as http:
        answer = http.post("/v1/jobs/edits", data={"prompt": "x", "steps": "4", "strength": "0.5"},
                           files={"image": ("in.png", image.getvalue(), "image/png")})
        assert answer.status_code == 202, answer.text
        result = http.get(f"/v1/jobs/{answer.json()['id']}/result", params={"wait": 60}).json()
        assert result["sdcpu"]["task"] == "img2img" and size(result["data"][0]["b64_json"]) == (64, 64)


@pytest.mark.parametrize("call, status, said", [
    (("get", "/v1/jobs/job-nobody", None), 404, "no job 'job-nobody'"),
    (("get", "/v1/jobs/job-nobody/result", None), 404, "never submitted"),
    (("post", "/v1/jobs/job-nobody/cancel", None), 404, "no job"),
    (("post", "/v1/jobs", {**LONG, "stream": True}), 400, "a job is polled"),
    (("post", "/v1/jobs", {**LONG, "size": "65x64"}), 400, "65"),
    (("post", "/v1/jobs", {**LONG, "steps": "4"}), 400, "steps"),
])
def test_bad_job_requests_are_one_line_4xx_errors_before_any_compute(server, call, status, said):
    method, path, body = call
    with client(server) as http:
        answer = http.request(method, path, json=body)
    assert answer.status_code == status and said in answer.json()["error"]["message"], answer.text
    assert server.worker.depth() == 0 and server.worker.running is None


def test_result_wait_is_bounded_and_the_key_is_needed(server):
    with client(server) as http:
        ident = submitted(http, {**LONG, "steps": 2})
        assert http.get(f"/v1/jobs/{ident}/result", params={"wait": 61}).status_code == 400
        assert httpx.get(f"{server.url}/v1/jobs/{ident}").status_code == 401
        assert http.get(f"/v1/jobs/{ident}/result", params={"wait": 60}).status_code == 200


def test_finished_jobs_are_forgotten_after_job_seconds(server, monkeypatch):
    from sdcpu.serve import jobs

    with client(server) as http:
        ident = submitted(http, {**LONG, "steps": 2})
        assert http.get(f"/v1/jobs/{ident}/result", params={"wait": 60}).status_code == 200
        later = time.monotonic() + 601  # the module's server keeps them 600 s (--job-seconds' default)
        monkeypatch.setattr(jobs, "time", types.SimpleNamespace(monotonic=lambda: later, time=time.time))
        gone = http.get(f"/v1/jobs/{ident}")
        assert gone.status_code == 404 and "--job-seconds" in gone.json()["error"]["message"]


@pytest.mark.parametrize("args", [("--reuse-port",), ("--ray", "--port", "8000", "--replicas", "2")])
def test_a_server_sharing_its_port_refuses_jobs_and_says_why(sdcpu_home, args):
    from sdcpu.serve import service
    from sdcpu.system import hardware

    served = options(*args)
    assert not served.jobs and options("--ray", "--port", "8000").jobs  # one replica holds every job
    _, app = service.build(served, hardware.detect(), on_fatal=lambda error: None)
    # no lifespan: the worker never starts, nothing loads
    answer = TestClient(app, base_url="http://127.0.0.1").post("/v1/jobs", json=LONG)
    assert answer.status_code == 501 and "sharing its port" in answer.json()["error"]["message"]
