"""`sdcpu serve` against a live server on random:tiny: the real openai client, A1111 over httpx, bad input, auth,
a bounded load test checked against /metrics, SIGTERM mid-request."""

import base64
import concurrent.futures
import io
import json
import signal
import time

import httpx2 as httpx
import openai
import pytest
from PIL import Image

from images import REMADE_ALONE_LEVELS, level_difference
from serving import InProcess, Server, counter, free_port, load_benchmark
from sdcpu.cli import main

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TINY = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def server(sdcpu_home):
    live = InProcess("--api-key", KEY, "--max-queue", "4")
    yield live
    assert live.stop() == 0


def png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def test_openai_client_gets_a_png_of_the_asked_size(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    answer = client.images.generate(prompt="a red boat", n=2, size="80x64", response_format="b64_json",
                                    extra_body={"steps": 2, "seed": 5, "guidance": 3.0})
    images = [png(item.b64_json) for item in answer.data]
    assert [image.size for image in images] == [(80, 64), (80, 64)]
    assert "Steps: 2, Sampler: pndm, CFG scale: 3.0, Seed: 6, Size: 80x64" in images[1].text["parameters"]


def test_a1111_txt2img_with_a_sampler(server):
    body = {"prompt": "a lighthouse", "negative_prompt": "blurry", **TINY, "seed": 7, "cfg_scale": 5,
            "batch_size": 2, "sampler_name": "DPM++ 2M"}
    answer = httpx.post(f"{server.url}/sdapi/v1/txt2img", json=body, headers=AUTH, timeout=60).json()
    info = json.loads(answer["info"])
    assert [png(image).size for image in answer["images"]] == [(64, 64), (64, 64)]
    assert info["all_seeds"] == [7, 8] and info["sampler_name"] == "DPM++ 2M" and info["sdcpu_scheduler"] == "dpm++" and info["seconds"] > 0
    assert answer["parameters"]["prompt"] == "a lighthouse"
    again = httpx.post(f"{server.url}/sdapi/v1/txt2img", json={**body, "batch_size": 1}, headers=AUTH, timeout=60)
    alone, batched = png(again.json()["images"][0]), [png(image) for image in answer["images"]]
    assert level_difference(alone, batched[0]) <= REMADE_ALONE_LEVELS, "same seed, the same image up to rounding"
    assert level_difference(alone, batched[1]) > 10 * REMADE_ALONE_LEVELS, "another seed, another image"


LONG = "a ship " * 40  # 80 words: more than CLIP's 77 tokens
MALFORMED = [  # (path, body as sent, what the message says)
    ("/v1/images/generations", b"{not json", "JSON decode error"),
    ("/v1/images/generations", b"[1, 2]", "JSON object"),
    ("/v1/images/generations", b'"a prompt"', "JSON object"),
    ("/v1/images/generations", {}, "prompt: Field required"),
    ("/v1/images/generations", {"prompt": ""}, "prompt: String should have at least 1 character"),
    ("/v1/images/generations", {"prompt": 5}, "prompt: Input should be a valid string"),
    ("/v1/images/generations", {"prompt": "x", "n": 0}, "n: Input should be greater than or equal to 1"),
    ("/v1/images/generations", {"prompt": "x", "n": 11}, "n: Input should be less than or equal to 10"),
    ("/v1/images/generations", {"prompt": "x", "n": "2"}, "n: Input should be a valid integer"),
    ("/v1/images/generations", {"prompt": "x", "size": "big"}, "expected WIDTHxHEIGHT"),
    ("/v1/images/generations", {"prompt": "x", "size": "²x512"}, "expected WIDTHxHEIGHT"),
    ("/v1/images/generations", {"prompt": "x", "size": "٥١٢x512"}, "expected WIDTHxHEIGHT"),  # Arabic-Indic 512
    ("/v1/images/generations", {"prompt": "x", "size": "9" * 5000 + "x512"}, "size: String should have at most"),
    ("/v1/images/generations", {"prompt": "x", "size": "60x64"}, "width 60: must be a multiple of 8"),
    ("/v1/images/generations", {"prompt": "x", "size": "64x2048"}, "height 2048: must be a multiple of 8 from 64 to 1024"),
    ("/v1/images/generations", {"prompt": "x", "response_format": "url"}, "'url' is not served"),
    ("/v1/images/generations", {"prompt": "x", "steps": 0}, "steps: Input should be greater than or equal to 1"),
    ("/v1/images/generations", {"prompt": "x", "steps": 151}, "steps: Input should be less than or equal to 150"),
    ("/v1/images/generations", {"prompt": "x", "steps": 2.5}, "steps: Input should be a valid integer"),
    ("/v1/images/generations", {"prompt": "x", "seed": -1}, "seed: Input should be greater than or equal to 0"),
    ("/v1/images/generations", {"prompt": "x", "style": ["vivid"]}, "style: Extra inputs are not permitted"),
    ("/v1/images/generations", {"prompt": LONG}, "prompt is 82 tokens; the text encoder reads 77"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "width": 65}, "width 65: must be a multiple of 8"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "steps": "20"}, "steps: Input should be a valid integer"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "cfg_scale": 31}, "cfg_scale: Input should be less than or equal to 30"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "sampler_name": "Euler z"}, "sampler_name 'Euler z' is not served"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "enable_hr": True, "hr_upscaler": "ESRGAN_4x"},
     "hr_upscaler 'ESRGAN_4x' is not served; choose from: Latent,"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "enable_hr": True, "width": 768, "hr_scale": 1.5},
     "size 1152x768: width 1152: must be a multiple of 8 from 64 to 1024"),  # the second pass's size, bounded too
    ("/sdapi/v1/txt2img", {"prompt": "x", "enable_hr": True, "hr_prompt": "y"}, 'hr_prompt "y": asks for a second-pass'),
    ("/sdapi/v1/txt2img", {"prompt": "x", "hires": True}, "hires: Extra inputs are not permitted"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "negative_prompt": LONG}, "negative prompt is 82 tokens"),
    ("/sdapi/v1/txt2img", {"prompt": None}, "prompt: Input should be a valid string"),
    ("/v1/images/generations", {"prompt": "x", "size": "1024x1024", "steps": 150, "n": 2},
     "asks for 315 M pixel-steps (width x height x steps x images); this server makes at most 157 M a request"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "width": 1024, "height": 1024, "steps": 100, "n_iter": 2}, "210 M pixel"),
    ("/v1/images/generations", {"prompt": "x", "user": "u" * 257}, "user: String should have at most 256 characters"),
    ("/v1/images/generations", {"prompt": "x", "model": "m" * 257}, "model: String should have at most 256"),
    ("/v1/images/generations", {"prompt": "x " * 2049}, "prompt: String should have at most 4096 characters"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "sampler_name": "s" * 257}, "sampler_name: String should have at most"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "hr_sampler_name": "s" * 257}, "hr_sampler_name: String should have"),
    ("/sdapi/v1/img2img", {"prompt": "x", "init_images": ["x"], "scheduler": "k" * 257}, "scheduler: String should"),
]


def test_malformed_requests_get_a_400_and_the_server_goes_on(server):
    assert len(MALFORMED) >= 20
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        for path, body, message in MALFORMED:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            answer = client.post(path, content=content, headers={"Content-Type": "application/json"})
            assert answer.status_code == 400, (body, answer.text)
            assert message in answer.json()["error"]["message"], (body, answer.text)
        assert client.post("/v1/images/generations", data={"prompt": "x"}).status_code == 400  # a form, not JSON
        assert client.get("/v1/images/generations").status_code == 405
        assert client.get("/no/such/path").json()["error"]["message"] == "Not Found"
        assert client.get("/health").status_code == 200


def test_api_key_is_needed_on_the_apis_and_metrics_not_on_health_and_page(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for path in ("/v1/images/generations", "/sdapi/v1/txt2img"):
            answer = httpx.post(f"{server.url}{path}", json={"prompt": "x"}, headers=headers)
            assert answer.status_code == 401 and "API key" in answer.json()["error"]["message"]
        assert httpx.get(f"{server.url}/metrics", headers=headers).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong").images.generate(prompt="x")
    assert httpx.get(f"{server.url}/health").json()["status"] == "ready"
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "<form" in page.text
    assert "http" not in page.text.replace("http-equiv", ""), "the page loads nothing from elsewhere"
    assert httpx.get(f"{server.url}/openapi.json").status_code == 404, "docs are off without --docs"


def test_bounded_load_every_request_answered_200_or_503_and_metrics_agree(server):
    path = "/v1/images/generations"
    before = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    report = load_benchmark().load(server.url, clients=16, requests=64, body={"prompt": "x", "size": "64x64", "steps": 1},
                  headers=AUTH, timeout=60)
    after = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    assert report.answered == 64 and set(report.statuses) <= {200, 503}, report.statuses
    assert report.statuses[200] >= 1 and report.statuses.get(503, 0) >= 1, "16 clients overflow a queue of 4"
    assert report.retry_after_missing == 0
    for status, count in report.statuses.items():
        seen = counter(after, "sdcpu_requests_total", endpoint=path, status=status)
        assert seen - counter(before, "sdcpu_requests_total", endpoint=path, status=status) == count
    images = counter(after, "sdcpu_images_generated_total") - counter(before, "sdcpu_images_generated_total")
    assert images == report.statuses[200]
    assert counter(after, "sdcpu_queue_depth") == 0


def test_sigterm_finishes_the_request_in_flight_then_exits_0(sdcpu_home):
    live = Server("--drain-seconds", "300", home=sdcpu_home)  # the default 30 s may not be enough on a busy machine
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 100}  # 100 steps of 20-100 ms on 2 cores
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, f"{live.url}/sdapi/v1/txt2img", json=body, timeout=300)
        progress = f"{live.url}/sdapi/v1/progress?skip_current_image=true"
        while httpx.get(progress).json()["state"]["sampling_step"] < 1:  # the request is running
            assert not pending.done(), pending.result().text
            time.sleep(0.02)
        live.proc.send_signal(signal.SIGTERM)
        assert not pending.done()
        deadline = time.monotonic() + 30
        while True:  # once the signal is handled, new connections are refused
            try:
                httpx.get(f"{live.url}/health", timeout=1)
            # refused; or reset, or closed without an answer: one accepted as the listener closed
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
                break
            except httpx.TimeoutException:
                pass
            assert time.monotonic() < deadline, "still accepting connections 30 s after SIGTERM"
            time.sleep(0.1)
        assert not pending.done(), "make the request longer: it ended before the shutdown began"
        answer = pending.result(timeout=300)
    assert answer.status_code == 200 and len(answer.json()["images"]) == 1
    assert live.proc.wait(timeout=60) == 0


def test_an_empty_key_in_the_environment_is_refused(capsys, monkeypatch):
    monkeypatch.setenv("SDCPU_API_KEY", "")
    assert main(["serve", "--recipe", "baseline", "--model", "random:tiny"]) == 2
    assert "the API key is empty" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--max-queue", "0"], "--max-queue must be at least 1"),
    (["--instances", "2", "--port", "0"], "--instances needs a fixed --port"),
    (["--warmup-size", "65x64"], "width 65: must be a multiple of 8"),
    (["--model", "random:sd99"], "unknown random architecture"),
    (["--api-key", ""], "the API key is empty"),
    (["--max-request-seconds", "0"], "--max-request-seconds must be more than 0"),
    (["--drain-seconds", "-1"], "--drain-seconds must be 0 or more"),
    (["--drain-seconds", "nan"], "--drain-seconds must be 0 or more"),
    (["--host", "0.0.0.0"], "no API key is set: pass --api-key KEY (or $SDCPU_API_KEY), or --insecure-no-key"),
    (["--host", "box.lan"], "--host box.lan is reachable from other machines"),
])
def test_bad_command_line_is_one_line_and_exit_2(capsys, monkeypatch, args, message):
    monkeypatch.delenv("SDCPU_API_KEY", raising=False)
    assert main(["serve", "--recipe", "baseline", "--model", "random:tiny", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_instances_share_one_port_take_the_command_lines_options_and_all_drain_on_sigterm(sdcpu_home):
    """The live command, each instance a process of its own: its options reach the server (--allowed-host, --docs)."""
    port = free_port()
    live = Server("--instances", "2", "--allowed-host", "box.lan", "--docs", home=sdcpu_home, port=port)
    pids, deadline = set(), time.monotonic() + 300  # each instance has one core: slow on a busy machine
    while len(pids) < 2:  # each request a new connection: the kernel spreads them over the instances
        assert time.monotonic() < deadline, f"only instance(s) {pids} answered ready"
        answer = httpx.get(f"{live.url}/health")
        if answer.status_code == 200:
            pids.add(answer.json()["pid"])
        time.sleep(0.1)
    assert live.proc.pid not in pids and live.url.endswith(f":{port}")
    answer = httpx.post(f"{live.url}/sdapi/v1/txt2img", json={"prompt": "x", **TINY}, timeout=120)
    assert answer.status_code == 200
    assert httpx.get(f"{live.url}/health", headers={"Host": "box.lan:7860"}).status_code == 200
    refused = httpx.get(f"{live.url}/health", headers={"Host": "rebound.example"})
    assert refused.status_code == 400 and "--allowed-host" in refused.json()["error"]["message"]
    assert "/v1/images/generations" in httpx.get(f"{live.url}/openapi.json").json()["paths"]
    assert live.stop() == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{live.url}/health", timeout=5)
