"""The websocket stack over the real Redis channel layer: health round trips, bad frames, origins."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.testing import WebsocketCommunicator

from courseapp.asgi import application
from workers.consumers import HealthConsumer

# Consumers close stale database connections on every message (channels), so these tests
# need database access even where they store nothing.
pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


async def connect(path: str = "/ws/health/", app=None, origin: bytes = b"http://localhost") -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(app or HealthConsumer.as_asgi(), path, headers=[(b"origin", origin)])
    connected, _ = await communicator.connect()
    assert connected
    assert json.loads(await communicator.receive_from())["type"] == "hello"
    return communicator


async def ping(communicator: WebsocketCommunicator, echo: str) -> dict:
    await communicator.send_to(text_data=json.dumps({"type": "ping", "echo": echo}))
    return json.loads(await communicator.receive_from(timeout=5))


async def test_a_ping_comes_back_through_the_channel_layer():
    communicator = await connect()
    assert await ping(communicator, "hi") == {"type": "pong", "echo": "hi"}
    await communicator.disconnect()


async def test_an_idle_socket_survives_longer_than_the_redis_socket_timeout():
    # redis-py 8 with channels-redis 4.3.0 used to drop a consumer idle for 5 s (close 1011);
    # settings.CHANNEL_LAYERS sets socket_timeout=None against it.
    communicator = await connect()
    await asyncio.sleep(7)
    assert await ping(communicator, "still here") == {"type": "pong", "echo": "still here"}
    await communicator.disconnect()


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("not json", "not valid JSON"),
        ('{"type": "launch"}', "unknown message"),
        ("[1, 2]", "unknown message"),
        ("x" * 5000, "at most 4 KiB"),
    ],
)
async def test_bad_frames_get_an_error_and_the_socket_stays_usable(frame, error):
    communicator = await connect()
    await communicator.send_to(text_data=frame)
    reply = json.loads(await communicator.receive_from())
    assert reply["type"] == "error" and error in reply["error"]
    assert (await ping(communicator, "after"))["type"] == "pong"
    await communicator.disconnect()


async def test_binary_frames_are_refused_politely():
    communicator = await connect()
    await communicator.send_to(bytes_data=b"\x00\x01")
    assert "JSON text frames" in json.loads(await communicator.receive_from())["error"]
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_the_site_accepts_its_own_origin_through_the_whole_stack():
    communicator = await connect(app=application)
    assert (await ping(communicator, "full stack"))["echo"] == "full stack"
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_cross_origin_websocket_is_refused():
    communicator = WebsocketCommunicator(application, "/ws/health/", headers=[(b"origin", b"https://evil.example")])
    connected, _ = await communicator.connect()
    assert not connected
    await communicator.disconnect()
