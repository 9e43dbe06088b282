"""A LoRA job's live panel: the loss curve, steps, tokens/s and ETA, pushed over the job's websocket.

The row is moved by hand the way the runner moves it (Job.report with metrics, then publish),
so this needs no worker; tests/jobs/test_lora_job.py runs the real thing.
"""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from tests.jobs.test_job_websocket import connect
from workers.jobs import publish
from workers.jobs.lora import loss_curve
from workers.models import Job

pytestmark = pytest.mark.django_db(transaction=True)


def live_metrics(step: int, total: int = 10) -> dict:
    train = [[s, round(5.0 - 0.2 * s, 3)] for s in range(1, step + 1)]
    val = [[s, round(5.1 - 0.15 * s, 3)] for s in range(2, step + 1, 2)]
    return {
        "history": {"train": train, "val": val},
        "live": {
            "step": step,
            "total_steps": total,
            "train_loss": train[-1][1],
            "val_loss": None,
            "tokens_per_second": 151.2,
            "eta_seconds": 75,
        },  # fmt: skip
        "events": [["20:00:00", "Training 460,800 of 134,975,808 parameters (0.34%) for 10 steps."]],
        "dataset": {
            "format": "text",
            "train_examples": 40,
            "validation_examples": 4,
            "train_tokens": 1280,
            "truncated": 0,
            "dropped": 0,
        },  # fmt: skip
    }


@database_sync_to_async
def running_job(owner) -> Job:
    now = timezone.now()
    return Job.objects.create(
        owner=owner, kind=Job.Kind.LORA, queue="gpu", status=Job.Status.RUNNING, started_at=now, heartbeat_at=now,
        stage="Training, step 3 of 10", progress=0.3, params={"dataset": "shakespeare", "rank": 4},
        metrics=live_metrics(3),
    )  # fmt: skip


@database_sync_to_async
def train_on(job: Job, step: int) -> None:
    assert job.report(f"Training, step {step} of 10", step / 10, metrics=live_metrics(step))
    publish(job)


@pytest.mark.asyncio
async def test_the_curve_and_the_numbers_update_live_over_the_websocket(owner):
    job = await running_job(owner)
    communicator, connected = await connect(job, owner)
    assert connected
    first = await communicator.receive_from(10)
    assert 'data-testid="lora-step">3 / 10<' in first and "1 min 15 s" in first and ">151<" in first
    assert 'class="curve-train"' in first and first.count("<circle") == 1  # one validation point so far
    assert "Training 460,800 of 134,975,808 parameters" in first

    await train_on(job, 6)
    second = await communicator.receive_from(10)
    assert 'data-testid="lora-step">6 / 10<' in second and second.count("<circle") == 3
    await communicator.disconnect()


def test_the_curve_scales_to_the_steps_and_skips_bad_points():
    curve = loss_curve({"history": {"train": [[1, 4.0], [2, float("nan")], [3, 3.0]], "val": []}, "steps": 3})
    points = [tuple(map(float, point.split(","))) for point in curve["train"].split()]
    assert len(points) == 2 and points[0][1] < points[1][1]  # a falling loss falls on the page (y grows down)
    assert points[-1][0] == curve["right"]  # the last step at the right edge
    assert loss_curve({}) is None
