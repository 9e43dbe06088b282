"""The live model over websockets, end to end: consumer, channel layer, a real model server process."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from channels.testing import WebsocketCommunicator

from lessons.consumers import ExerciseConsumer, ModelApiConsumer
from workers.inference.protocol import live_servers

# Consumers close stale database connections on every message (channels), so these tests
# need database access even where they store nothing.
pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.sqlite_only,
    pytest.mark.usefixtures("model_server"),
    pytest.mark.django_db(transaction=True),
]


# Greedy on this prompt runs on for hundreds of tokens; a sampled reply may end at once.
LONG = "Chapter 1. Once upon a time"


async def connect(consumer=ModelApiConsumer, path="/ws/model/") -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(consumer.as_asgi(), path)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def frames(communicator, until: str = "done", timeout: float = 60) -> list[dict]:
    """Frames up to and including the first of type `until`."""
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = json.loads(await communicator.receive_from(timeout=deadline - time.monotonic()))
        got.append(frame)
        if frame["type"] == until:
            return got
    raise AssertionError(f"no {until!r} frame in {got}")


async def ready(communicator) -> None:
    assert json.loads(await communicator.receive_from(timeout=10)) == {"type": "status", "model": "ready"}


async def rows_in_use(settings) -> int:
    servers = await live_servers(settings.REDIS_URL)
    return sum(server["rows"] for server in servers)


async def test_a_prompt_streams_back_as_coalesced_token_frames(settings):
    ws = await connect()
    await ready(ws)
    await ws.send_json_to(
        {"type": "generate", "id": "g1", "prompt": "The capital of France is", "temperature": 0, "max_tokens": 12}
    )
    got = await frames(ws)
    kinds = [f["type"] for f in got]
    assert kinds[0] in {"queued", "started"} and kinds[-1] == "done"
    text = "".join(f["text"] for f in got if f["type"] == "tokens")
    assert text.startswith(" Paris")
    done = got[-1]
    assert done["id"] == "g1" and done["reason"] == "length" and done["text"] == text
    assert done["usage"]["completion_tokens"] == 12
    # 12 tokens arrive in fewer frames than tokens: frames are batched every ~40 ms.
    token_frames = [f for f in got if f["type"] == "tokens"]
    assert sum(len(f["tokens"]) for f in token_frames) == 12
    await ws.disconnect()


async def test_candidates_come_raw_and_adjusted(settings):
    ws = await connect()
    await ready(ws)
    await ws.send_json_to(
        {
            "type": "generate",
            "id": "c",
            "prompt": "The capital of France is",
            "max_tokens": 0,
            "candidates": 5,
            "top_k": 2,
        }
    )
    got = await frames(ws)
    [candidates] = [f for f in got if f["type"] == "candidates"]
    assert candidates["raw"][0]["text"] == " Paris" and len(candidates["raw"]) == 5
    assert len(candidates["adjusted"]) == 2
    await ws.disconnect()


async def test_cancel_frees_the_row_within_a_step(settings):
    ws = await connect()
    await ready(ws)
    await ws.send_json_to({"type": "generate", "id": "long", "prompt": LONG, "max_tokens": 400, "temperature": 0})
    await frames(ws, until="tokens")
    started = time.monotonic()
    await ws.send_json_to({"type": "cancel", "id": "long"})
    got = await frames(ws)
    assert got[-1] == {"type": "done", "id": "long", "reason": "cancelled"}
    while await rows_in_use(settings):
        assert time.monotonic() - started < 6, "the row was not freed"
        await asyncio.sleep(0.2)
    await ws.disconnect()


async def test_a_closed_websocket_frees_its_row(settings):
    ws = await connect()
    await ready(ws)
    await ws.send_json_to({"type": "generate", "id": "gone", "prompt": LONG, "max_tokens": 400, "temperature": 0})
    await frames(ws, until="tokens")
    await ws.disconnect()
    started = time.monotonic()
    await asyncio.sleep(2.5)  # the presence key is refreshed every 2 s
    while await rows_in_use(settings):
        assert time.monotonic() - started < 8, "the row of a closed socket was not freed"
        await asyncio.sleep(0.3)


async def test_a_new_request_replaces_the_learners_running_one(settings):
    ws = await connect()
    await ready(ws)
    await ws.send_json_to({"type": "generate", "id": "old", "prompt": LONG, "max_tokens": 300, "temperature": 0})
    await frames(ws, until="tokens")
    await ws.send_json_to({"type": "generate", "id": "new", "prompt": "Hi", "max_tokens": 3, "temperature": 0})
    got = await frames(ws, until="done")
    # "old" ends as cancelled by the server; the socket only reports requests it still tracks.
    while not (got[-1]["type"] == "done" and got[-1]["id"] == "new"):
        got += await frames(ws, until="done")
    assert got[-1]["reason"] == "length"
    await ws.disconnect()


async def test_waiting_learners_see_their_place_in_the_queue(settings):
    sockets = [await connect() for _ in range(3)]
    for number, ws in enumerate(sockets):
        await ready(ws)
        # Greedy, on prompts that run on: a sampled reply could end early and make "length" a gamble.
        request = {"id": f"q{number}", "prompt": f"Chapter {number}. Once upon a time", "max_tokens": 40}
        await ws.send_json_to({"type": "generate", **request, "temperature": 0})
    # The test server runs 2 rows: the third learner waits, moves up to first in line, then starts.
    got = await frames(sockets[2])
    kinds = [f["type"] for f in got]
    positions = [f["position"] for f in got[: kinds.index("started")] if f["type"] == "queued"]
    assert positions and positions == sorted(positions, reverse=True) and positions[-1] == 1
    assert kinds.index("started") < kinds.index("tokens")
    assert got[-1]["reason"] == "length"
    for ws in sockets:
        await ws.disconnect()


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("{not json", "not valid JSON"),
        ('{"type": "dance"}', "unknown message type"),
        ('{"type": "generate", "prompt": "  "}', "the prompt must be non-empty text"),
        ('{"type": "generate", "prompt": "Hi", "temperature": -1}', "temperature must be between 0 and 5"),
        ('{"type": "generate", "prompt": "Hi", "top_k": 0}', "top_k must be between 1"),
        ('{"type": "generate", "prompt": "Hi", "top_p": 1.5}', "top_p must be between 0 and 1"),
        ('{"type": "generate", "prompt": "Hi", "max_tokens": 1000000}', "max_tokens must be between 0 and 512"),
        ('{"type": "generate", "prompt": "' + "x" * 20000 + '"}', "at most 16 KiB"),
        ('{"type": "generate", "prompt": "' + "word " * 2400 + '", "max_tokens": 10}', "more than the model's context"),
    ],
)
async def test_bad_input_gets_an_error_and_the_socket_stays_usable(settings, frame, error):
    ws = await connect()
    await ready(ws)
    await ws.send_to(text_data=frame)
    got = await frames(ws, until="error")
    assert error in got[-1]["error"]
    await ws.send_json_to({"type": "generate", "id": "after", "prompt": "Hi", "max_tokens": 1})
    assert (await frames(ws))[-1]["reason"] in {"length", "end"}
    await ws.disconnect()


async def test_when_no_model_server_runs_the_learner_is_told(settings):
    settings.REDIS_URL = settings.REDIS_URL.rsplit("/", 1)[0] + "/15"  # a Redis database no server announces in
    ws = await connect()
    assert json.loads(await ws.receive_from(timeout=10)) == {"type": "status", "model": "unavailable"}
    await ws.send_json_to({"type": "generate", "id": "x", "prompt": "Hi"})
    reply = (await frames(ws, until="error", timeout=10))[-1]
    assert "not running right now" in reply["error"]
    await ws.disconnect()


async def test_the_lesson_widget_gets_candidates_as_html(settings):
    ws = await connect(ExerciseConsumer, "/ws/exercise/?widget=w-1")
    assert "Model ready" in await ws.receive_from(timeout=10)
    await ws.send_json_to(
        {
            "exercise": "next-token",
            "action": "choose",
            "choose": "2644",
            "prompt": "The cat sat on the",
            "chosen": "",
            "HEADERS": {},
        }
    )
    html = ""
    while 'id="nt-candidates-w-1"' not in html:
        html = await ws.receive_from(timeout=30)
        if 'id="nt-sentence-w-1"' in html:
            assert '<span class="tok chosen" title="token 2644"> cat</span>' in html
            assert 'id="nt-chosen-w-1" value="2644"' in html
    assert 'name="choose" value=' in html and "<progress" in html
    await ws.disconnect()


async def test_a_widget_with_a_bad_id_is_refused(settings):
    communicator = WebsocketCommunicator(ExerciseConsumer.as_asgi(), "/ws/exercise/?widget=<script>")
    connected, _ = await communicator.connect()
    assert not connected


async def test_too_many_requests_get_an_error_frame_and_the_socket_stays(settings):
    settings.MODEL_WS_RATE_PER_MINUTE = 1
    ws = await connect()
    await ready(ws)
    # The window counts per learner: this socket is a new anonymous learner.
    await ws.send_json_to({"type": "generate", "id": "one", "prompt": "Hi", "max_tokens": 1})
    assert (await frames(ws))[-1]["type"] == "done"
    await ws.send_json_to({"type": "generate", "id": "two", "prompt": "Hi", "max_tokens": 1})
    error = (await frames(ws, until="error"))[-1]
    assert error["id"] == "two" and "Too many requests" in error["error"]
    await ws.disconnect()
