"""Several model servers read the one request channel: that is how serving scales out."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.testing import WebsocketCommunicator

from lessons.consumers import ModelApiConsumer
from tests.model_server import start_model_server, stop

# Consumers close stale database connections on every message (channels), so these tests
# need database access even where they store nothing.
pytestmark = [pytest.mark.asyncio, pytest.mark.sqlite_only, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def second_server(model_server, settings, tmp_path):
    proc = start_model_server(settings.REDIS_URL, tmp_path / "second.log", MODEL_MAX_ROWS="2", MODEL_THREADS="1")
    yield proc
    stop(proc)


async def one_learner(number: int) -> str:
    ws = WebsocketCommunicator(ModelApiConsumer.as_asgi(), "/ws/model/")
    await ws.connect()
    assert json.loads(await ws.receive_from(timeout=10))["model"] == "ready"
    await ws.send_json_to(
        {
            "type": "generate",
            "id": str(number),
            "prompt": f"Chapter {number}. Once upon a time",
            "max_tokens": 40,
            "temperature": 0,
        }
    )
    server = ""
    while True:
        frame = json.loads(await ws.receive_from(timeout=60))
        if frame["type"] == "started":
            server = frame["server"]
        if frame["type"] == "done":
            assert frame["reason"] == "length"
            break
    await ws.disconnect()
    return server


async def test_requests_are_shared_between_two_servers(second_server):
    servers = await asyncio.gather(*(one_learner(n) for n in range(6)))
    assert all(servers)
    assert len(set(servers)) == 2, servers
