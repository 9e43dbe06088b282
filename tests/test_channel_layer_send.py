"""The channel layer's one-round-trip send keeps channels-redis's rules, on a real Redis."""

from __future__ import annotations

import uuid

import pytest
import redis
from channels.exceptions import ChannelFull
from django.conf import settings

from courseapp.channel_layer import CourseChannelLayer

pytestmark = pytest.mark.asyncio


@pytest.fixture
def layer():
    prefix = f"test-send-{uuid.uuid4().hex[:8]}"
    hosts = [{"address": settings.REDIS_URL, "socket_timeout": None}]
    yield CourseChannelLayer(hosts=hosts, prefix=prefix, capacity=2, expiry=60)
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(*client.keys(f"{prefix}*") or [f"{prefix}-none"])


async def test_messages_arrive_in_order_and_a_full_channel_refuses_more(layer):
    await layer.send("lesson.alpha", {"type": "note", "n": 1})
    await layer.send("lesson.alpha", {"type": "note", "n": 2})
    with pytest.raises(ChannelFull):
        await layer.send("lesson.alpha", {"type": "note", "n": 3})
    assert (await layer.receive("lesson.alpha"))["n"] == 1
    assert (await layer.receive("lesson.alpha"))["n"] == 2
    await layer.send("lesson.alpha", {"type": "note", "n": 4})  # room again
    assert (await layer.receive("lesson.alpha"))["n"] == 4


async def test_a_channel_expires_unless_used(layer):
    await layer.send("lesson.beta", {"type": "note"})
    ttl = redis.Redis.from_url(settings.REDIS_URL).ttl(f"{layer.prefix}lesson.beta")
    assert 0 < ttl <= 60


async def test_a_process_local_channel_gets_its_message(layer):
    first, second = await layer.new_channel(), await layer.new_channel()
    await layer.send(second, {"type": "note", "to": "second"})
    await layer.send(first, {"type": "note", "to": "first"})
    assert await layer.receive(first) == {"type": "note", "to": "first"}
    assert await layer.receive(second) == {"type": "note", "to": "second"}


async def test_send_many_keeps_the_order_and_returns_what_a_full_channel_refused(layer):
    local = await layer.new_channel()
    messages = [
        ("lesson.gamma", {"type": "note", "n": 1}),
        (local, {"type": "note", "n": 2}),
        ("lesson.gamma", {"type": "note", "n": 3}),
        ("lesson.gamma", {"type": "note", "n": 4}),  # the third on a channel of capacity 2
        (local, {"type": "note", "n": 5}),
    ]
    refused = await layer.send_many(messages)
    assert refused == [messages[3]]
    assert [(await layer.receive("lesson.gamma"))["n"] for _ in range(2)] == [1, 3]
    assert [(await layer.receive(local))["n"] for _ in range(2)] == [2, 5]
