"""A job's websocket over the real stack (channel layer on Redis, the real worker publishing)."""

from __future__ import annotations

import re

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from courseapp.asgi import application
from tests.jobs.conftest import tokenizer_params
from workers.jobs import cancel_job
from workers.models import Job
from workers.tasks import train_tokenizer

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


@database_sync_to_async
def queued_job(user, **params) -> Job:
    """A queued row with no message sent yet: the test decides when the worker gets it."""
    return Job.objects.create(owner=user, kind=Job.Kind.TOKENIZER, queue="cpu", params=tokenizer_params(**params))


@database_sync_to_async
def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def connect(job: Job, user=None) -> tuple[WebsocketCommunicator, bool]:
    headers = [(b"origin", b"http://localhost")]
    if user is not None:
        headers.append((b"cookie", await session_cookie(user)))
    communicator = WebsocketCommunicator(application, f"/ws/jobs/{job.code}/", headers=headers)
    connected, _ = await communicator.connect()
    return communicator, connected


async def frames_until_closed(communicator: WebsocketCommunicator, timeout: float = 30) -> list[str]:
    frames = []
    while True:
        message = await communicator.receive_output(timeout)
        if message["type"] == "websocket.close":
            assert message.get("code", 1000) == 1000  # a normal close: htmx does not reconnect
            return frames
        frames.append(message["text"])


def status(frame: str) -> str:
    return re.search(r'data-status="(\w+)"', frame).group(1)


async def test_the_owner_watches_the_progress_live_until_the_job_ends(owner, worker):
    job = await queued_job(owner, corpus="shakespeare", vocab_size=2000)
    communicator, connected = await connect(job, owner)
    assert connected
    first = await communicator.receive_from()
    assert first.lstrip().startswith(f'<div id="job-{job.code}"')  # the panel, swapped in by its id
    assert status(first) == "queued" and "Waiting in the queue: next to start." in first

    await database_sync_to_async(train_tokenizer.delay)(job.pk)
    frames = await frames_until_closed(communicator)
    statuses = [status(frame) for frame in frames]
    assert statuses[0] == "running" and statuses[-1] == "succeeded"
    assert set(statuses) == {"running", "succeeded"}
    reading = [frame for frame in frames if "Reading the corpus…" in frame]
    assert reading and any(re.search(r'<progress class="job-progress" value="0\.[1-9]', f) for f in reading)
    assert any("Learning merges…" in frame for frame in frames)
    assert 'data-testid="merge-stepper"' in frames[-1] and 'data-testid="compare"' in frames[-1]
    await communicator.disconnect()


async def test_a_waiting_job_sees_its_queue_position_move_up(owner, classmate):
    ahead = await queued_job(classmate)
    mine = await queued_job(owner)
    communicator, connected = await connect(mine, owner)
    assert connected
    assert "position 2 (1 job ahead of yours)" in await communicator.receive_from()
    await database_sync_to_async(cancel_job)(ahead)
    assert "Waiting in the queue: next to start." in await communicator.receive_from(timeout=5)
    await communicator.disconnect()


async def test_a_finished_job_sends_its_state_once_and_closes(owner):
    job = await queued_job(owner)
    await database_sync_to_async(cancel_job)(job)
    communicator, connected = await connect(job, owner)
    assert connected
    frames = await frames_until_closed(communicator, timeout=5)
    assert len(frames) == 1 and status(frames[0]) == "cancelled"


@pytest.mark.parametrize("who", ["classmate", "stranger"])
async def test_only_the_owner_may_watch_a_job(who, owner, classmate):
    job = await queued_job(owner)
    communicator, connected = await connect(job, classmate if who == "classmate" else None)
    assert not connected
    await communicator.disconnect()


async def test_a_job_from_another_origin_is_refused(owner):
    job = await queued_job(owner)
    communicator = WebsocketCommunicator(
        application,
        f"/ws/jobs/{job.code}/",
        headers=[(b"origin", b"https://evil.example"), (b"cookie", await session_cookie(owner))],
    )
    connected, _ = await communicator.connect()
    assert not connected
    await communicator.disconnect()
