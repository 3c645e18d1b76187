"""Several models in one server (serve --model A --model B), live on random:tiny (SD) and random:tiny-sdxl (SDXL):
selection by OpenAI's `model`, A1111's override_settings and options, the listings, and the memory budget releasing
the least recently used model and preparing it again when asked for."""

import json

import openai
import pytest

from serving import InProcess, client
from sdcpu.pipeline import generate
from sdcpu.serve import served
from sdcpu.serve.queue import batch_key
from sdcpu.serve.schemas import Job

SD, SDXL = "random:tiny", "random:tiny-sdxl"
BODY = {"prompt": "x", "size": "64x64", "steps": 2, "seed": 1}


@pytest.fixture(scope="module")
def server(sdcpu_home):
    live = InProcess("--model", SD, "--model", SDXL, "--api-key", "models-key")  # SD the default
    yield live
    assert live.stop() == 0


def test_both_models_are_listed_and_held_and_each_request_gets_the_one_it_names(server):
    with client(server) as http:
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == [SD, SDXL]
        assert [m["title"] for m in http.get("/sdapi/v1/sd-models").json()] == [SD, SDXL]
        health = http.get("/health").json()
        assert [(m["name"], m["held"], m["loads"]) for m in health["models"]] == [(SD, True, 1), (SDXL, True, 1)]
        made = {name: http.post("/v1/images/generations", json={**BODY, "model": name}).json()["sdcpu"]["model"]
                for name in (SD, SDXL)}
        assert made == {SD: SD, SDXL: SDXL}
        assert http.post("/v1/images/generations", json=BODY).json()["sdcpu"]["model"] == SD  # none named: default
        unknown = http.post("/v1/images/generations", json={**BODY, "model": "dall-e-3"})
        assert unknown.status_code == 400 and f"serves '{SD}', '{SDXL}'" in unknown.json()["error"]["message"]
    oai = openai.OpenAI(base_url=f"{server.url}/v1", api_key="models-key", max_retries=0)
    assert [model.id for model in oai.models.list()] == [SD, SDXL]
    image = oai.images.generate(model=SDXL, prompt="x", size="64x64", extra_body={"steps": 2})
    assert image.model_extra["sdcpu"]["model"] == SDXL


def test_a1111_selects_by_override_settings_and_by_its_options(server):
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 2}
    with client(server) as http:
        def model_of(extra: dict) -> str:
            answer = http.post("/sdapi/v1/txt2img", json={**body, **extra})
            assert answer.status_code == 200, answer.text
            info = json.loads(answer.json()["info"])
            assert info["sd_model_name"] == info["model"]
            return info["model"]

        assert model_of({}) == SD
        assert model_of({"override_settings": {"sd_model_checkpoint": SDXL}}) == SDXL
        assert http.post("/sdapi/v1/options", json={"sd_model_checkpoint": SDXL}).status_code == 200
        try:
            assert http.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == SDXL
            assert model_of({}) == SDXL
            assert model_of({"override_settings": {"sd_model_checkpoint": SD}}) == SD
        finally:
            http.post("/sdapi/v1/options", json={"sd_model_checkpoint": SD})
        refused = http.post("/sdapi/v1/options", json={"sd_model_checkpoint": "other.safetensors"})
        assert refused.status_code == 400 and "--model A --model B" in refused.json()["error"]["message"]


def test_jobs_of_two_models_never_share_a_call():
    request = generate.Request("x", width=64, height=64, steps=2)
    assert batch_key(Job(request, model=SD)) != batch_key(Job(request, model=SDXL))
    assert batch_key(Job(request, model=SD)) == batch_key(Job(request, model=SD))


@pytest.fixture(scope="module")
def budget(sdcpu_home):
    """A server whose budget holds one model: each measured at 1 GiB (its RSS growth made a counter's: a tiny model's
    real growth is within the allocator's noise), --max-memory 1.5."""
    with pytest.MonkeyPatch.context() as patch:
        counter = iter(range(0, 1000))
        patch.setattr(served, "_rss_gib", lambda: float(next(counter)))
        live = InProcess("--model", SD, "--model", SDXL, "--api-key", "budget-key", "--max-memory", "1.5")
        yield live
        assert live.stop() == 0


def test_the_least_recently_used_model_is_released_and_prepared_again_when_asked(budget):
    with client(budget) as http:
        def held() -> dict:
            return {m["name"]: (m["held"], m["loads"]) for m in http.get("/health").json()["models"]}

        assert held() == {SD: (True, 1), SDXL: (False, 1)}  # SDXL prepared first, released to hold the default
        answer = http.post("/v1/images/generations", json={**BODY, "model": SDXL})
        assert answer.status_code == 200 and answer.json()["sdcpu"]["model"] == SDXL
        assert held() == {SD: (False, 1), SDXL: (True, 2)}
        assert http.post("/v1/images/generations", json=BODY).json()["sdcpu"]["model"] == SD
        assert held() == {SD: (True, 2), SDXL: (False, 2)}
        health = http.get("/health").json()
        assert health["held_gib"] == 1.0 and health["max_memory_gib"] == 1.5


def test_serve_refuses_a_model_given_twice_and_recipes_that_do_not_match_the_models(capsys):
    from sdcpu.cli import main

    assert main(["serve", "--model", SD, "--model", SD]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(["serve", "--model", SD, "--model", SDXL, "--recipe", "baseline", "--recipe", "baseline",
                 "--recipe", "baseline"]) == 2
    assert "--recipe given 3 times for 2 models" in capsys.readouterr().err
    assert main(["serve", "--model", SD, "--model", SDXL, "--recipe", "baseline", "--recipe", "jemalloc"]) == 2
    assert "share one process" in capsys.readouterr().err
    assert main(["serve", "--max-memory", "0"]) == 2
    assert "--max-memory" in capsys.readouterr().err


def test_a_model_prepared_again_counts_the_most_memory_it_took(monkeypatch):
    readings = iter([0.0, 3.0, 3.0, 3.5])  # first 3 GiB; again, its mapped weights not yet touched: 0.5
    monkeypatch.setattr(served, "_rss_gib", lambda: next(readings))
    model = served.Model("m", "baseline", True, lambda worker, again: object())
    models = served.Models([model], max_gib=10)
    models.hold(model, None)
    served.release(model)
    models.hold(model, None)
    assert (model.gib, model.loads, models.held_gib()) == (3.0, 2, 3.0)


def test_models_dir_serves_each_folder_and_safetensors_file_by_its_name(sdcpu_home, tmp_path, tiny):
    from sdcpu import load_pipeline
    from sdcpu.commands.serve import _models_dir

    load_pipeline(SD).save_pretrained(tmp_path / "house-model")
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "empty").mkdir()
    assert _models_dir(str(tmp_path)) == [str(tmp_path / "house-model")]
    live = InProcess("--models-dir", str(tmp_path), "--api-key", "dir-key")  # after random:tiny, the default
    try:
        with client(live) as http:
            assert [m["id"] for m in http.get("/v1/models").json()["data"]] == [SD, "house-model"]
            made = http.post("/v1/images/generations", json={**BODY, "model": "house-model"}).json()["sdcpu"]
            assert made["model"] == "house-model"
    finally:
        assert live.stop() == 0


def test_an_empty_models_dir_is_one_line(tmp_path, capsys):
    from sdcpu.cli import main

    assert main(["serve", "--models-dir", str(tmp_path)]) == 2
    assert "no diffusers folder (model_index.json) or .safetensors file" in capsys.readouterr().err
