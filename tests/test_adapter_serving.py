"""A learner's LoRA adapter on the shared model server: theirs to use, nobody else's.

A real `serve_model` process, a real PEFT adapter for the course model, the websocket API.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings

from lessons.consumers import ModelApiConsumer
from tests.test_model_websockets import frames, ready
from workers.models import Artifact, Job

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.sqlite_only,
    pytest.mark.usefixtures("model_server"),
    pytest.mark.django_db(transaction=True),
]

PROMPT = "Chapter 1. Once upon a time"


@pytest.fixture(scope="module")
def adapter_zip(tmp_path_factory) -> Path:
    """A rank-4 PEFT adapter of the course model with random (not zero) updates, zipped as the
    LoRA jobs zip theirs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(django_settings.MODEL_PATH, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(folder)
    path = folder / "adapter.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            archive.write(folder / name, name)
    return path


def finished_lora_job(owner, settings, source: Path | None, name: str = "adapter.zip") -> Job:
    """A succeeded LoRA job of `owner` whose artifact is `source` (or garbage when None)."""
    job = Job.objects.create(
        owner=owner,
        kind=Job.Kind.LORA,
        queue="gpu",
        params={"dataset": "course-qa", "rank": 4},
        status=Job.Status.SUCCEEDED,
    )
    target = Path(settings.ARTIFACTS_DIR) / str(job.code) / name
    target.parent.mkdir(parents=True)
    if source is None:
        target.write_bytes(b"this is not a zip")
    else:
        shutil.copy(source, target)
    Artifact.objects.create(job=job, name=name, size=target.stat().st_size)
    return job


@pytest.fixture
def artifacts(settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    return settings


async def connect_as(user) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(ModelApiConsumer.as_asgi(), "/ws/model/")
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    await ready(communicator)
    return communicator


async def generate(ws, request_id: str, **extra) -> list[dict]:
    await ws.send_json_to(
        {"type": "generate", "id": request_id, "prompt": PROMPT, "max_tokens": 12, "temperature": 0, **extra}
    )
    return await frames(ws)


def text_of(got: list[dict]) -> str:
    return "".join(frame["text"] for frame in got if frame["type"] == "tokens")


@pytest.fixture
def owners_job(owner, artifacts, adapter_zip) -> Job:
    return finished_lora_job(owner, artifacts, adapter_zip)


async def test_the_owner_generates_with_their_adapter_and_it_changes_the_text(owner, owners_job):
    ws = await connect_as(owner)
    base = await generate(ws, "base")
    adapted = await generate(ws, "adapted", adapter=str(owners_job.code))
    again = await generate(ws, "again", adapter=str(owners_job.code))  # now from the server's cache
    await ws.disconnect()
    assert base[-1]["type"] == adapted[-1]["type"] == "done", (base[-1], adapted[-1])
    assert text_of(base) and text_of(adapted)
    assert text_of(adapted) != text_of(base)
    assert text_of(again) == text_of(adapted)  # greedy: the same adapter gives the same text


async def test_a_classmate_cannot_use_someone_elses_adapter(classmate, owners_job):
    ws = await connect_as(classmate)
    await ws.send_json_to({"type": "generate", "id": "x", "prompt": PROMPT, "adapter": str(owners_job.code)})
    got = await frames(ws, until="error")
    await ws.disconnect()
    assert "not found among your finished fine-tuning jobs" in got[-1]["error"]
    assert not [frame for frame in got if frame["type"] in {"tokens", "started"}]


@pytest.mark.parametrize("choice", ["00000000-0000-0000-0000-000000000000", "../../etc/passwd", "best"])
async def test_unknown_adapters_are_not_found(owner, choice):
    ws = await connect_as(owner)
    await ws.send_json_to({"type": "generate", "id": "x", "prompt": PROMPT, "adapter": choice})
    got = await frames(ws, until="error")
    await ws.disconnect()
    assert "not found" in got[-1]["error"]


async def test_an_adapter_file_the_server_cannot_read_is_a_clear_error(owner, artifacts):
    from channels.db import database_sync_to_async

    job = await database_sync_to_async(finished_lora_job)(owner, artifacts, None)
    ws = await connect_as(owner)
    await ws.send_json_to({"type": "generate", "id": "x", "prompt": PROMPT, "adapter": str(job.code)})
    got = await frames(ws, until="error")
    # The server keeps serving: the base model still answers on the same socket.
    after = await generate(ws, "after")
    await ws.disconnect()
    assert "could not be loaded" in got[-1]["error"] and "not a zip" in got[-1]["error"]
    assert after[-1]["type"] == "done" and text_of(after)


async def test_anonymous_visitors_have_no_adapters(owners_job):
    communicator = WebsocketCommunicator(ModelApiConsumer.as_asgi(), "/ws/model/")
    await communicator.connect()
    await ready(communicator)
    await communicator.send_json_to({"type": "generate", "id": "x", "prompt": PROMPT, "adapter": str(owners_job.code)})
    got = await frames(communicator, until="error")
    await communicator.disconnect()
    assert "not found" in got[-1]["error"]


async def html_until(ws, *markers: str, timeout: float = 60) -> str:
    """Every HTML frame until each marker has been seen in one of them."""
    seen, frames_html = set(), []
    while seen != set(markers):
        html = await ws.receive_from(timeout=timeout)
        frames_html.append(html)
        seen |= {marker for marker in markers if marker in html}
    return "\n".join(frames_html)


async def test_the_comparison_streams_both_models_and_shows_where_they_differ(owner, owners_job):
    from lessons.consumers import ExerciseConsumer

    ws = WebsocketCommunicator(ExerciseConsumer.as_asgi(), "/ws/exercise/?widget=cmp-1")
    ws.scope["user"] = owner
    await ws.connect()
    assert "Model ready" in await ws.receive_from(timeout=10)
    form = {"exercise": "adapter-compare", "prompt": PROMPT, "max_tokens": "6", "temperature": "0", "top_k": "",
            "top_p": "1", "seed": "", "HEADERS": {}}  # fmt: skip
    await ws.send_json_to({**form, "action": "compare", "model": str(owners_job.code)})
    html = await html_until(ws, 'data-testid="compare-base-done"', 'data-testid="compare-adapter-done"',
                            'data-testid="compare-moved"')  # fmt: skip
    assert 'id="cmp-out-base-cmp-1" hx-swap-oob="beforeend"' in html
    assert 'id="cmp-out-adapter-cmp-1" hx-swap-oob="beforeend"' in html
    assert "Reached max tokens" in html and "points</td>" in html

    # Without an adapter chosen, or with a classmate's, the learner is told what to do.
    await ws.send_json_to({**form, "action": "compare", "model": ""})
    assert "choose one of your adapters" in await html_until(ws, 'class="error live-error"')
    await ws.disconnect()


async def test_the_generation_playground_runs_on_the_chosen_adapter(owner, owners_job):
    from lessons.consumers import ExerciseConsumer

    texts = {}
    for model in ("", str(owners_job.code)):
        ws = WebsocketCommunicator(ExerciseConsumer.as_asgi(), "/ws/exercise/?widget=gen-1")
        ws.scope["user"] = owner
        await ws.connect()
        await ws.receive_from(timeout=10)
        await ws.send_json_to({"exercise": "generate", "action": "generate", "prompt": PROMPT, "max_tokens": "8",
                               "temperature": "0", "model": model, "HEADERS": {}})  # fmt: skip
        html = await html_until(ws, 'data-testid="generation-done"')
        texts[model] = "".join(part.split(">", 1)[1] for part in html.split('<span class="tok generated"')[1:])
        await ws.disconnect()
    assert texts[""] and texts[str(owners_job.code)]
    assert texts[""] != texts[str(owners_job.code)]


async def test_the_http_api_serves_the_owners_adapter_by_its_job_code(owner, classmate, owners_job, settings):
    from channels.db import database_sync_to_async

    from lessons.models import ApiToken
    from tests.test_api import post

    mine = (await database_sync_to_async(ApiToken.issue)(owner, "tests"))[1]
    theirs = (await database_sync_to_async(ApiToken.issue)(classmate, "tests"))[1]
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0}
    base = await post("/v1/completions", {**body, "model": settings.MODEL_PATH.name}, mine)
    adapted = await post("/v1/completions", {**body, "model": str(owners_job.code)}, mine)
    assert base.status_code == adapted.status_code == 200, adapted.content
    assert adapted.json()["model"] == str(owners_job.code)
    assert adapted.json()["choices"][0]["text"] != base.json()["choices"][0]["text"]

    refused = await post("/v1/completions", {**body, "model": str(owners_job.code)}, theirs)
    assert refused.status_code == 404
    assert refused.json()["error"]["param"] == "model" and "is not yours" in refused.json()["error"]["message"]
