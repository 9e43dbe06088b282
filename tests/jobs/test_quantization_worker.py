"""The quantization lab through the real worker: submitted from the page, run with the real model
and bitsandbytes, shown when done, reused for the next learner, and cancelled while it runs.
"""

from __future__ import annotations

import time

import pytest
from channels.db import database_sync_to_async

from tests.jobs.conftest import wait_for
from tests.jobs.test_job_websocket import connect, frames_until_closed
from workers.jobs import quantization
from workers.jobs.quantization import request_comparison
from workers.models import Job

pytestmark = pytest.mark.django_db(transaction=True)

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture(autouse=True)
def few_timed_tokens(monkeypatch):
    # Stored in the job's params when it is submitted, so the worker reads them from the row.
    monkeypatch.setattr(quantization, "DEFAULT_NEW_TOKENS", 4)
    monkeypatch.setattr(quantization, "TOP_K", 5)


def watch(job: Job, timeout: float = 180) -> tuple[Job, list[str]]:
    """Polls the job until it ends; returns it and the stages seen on the way."""
    stages: list[str] = []
    deadline = time.monotonic() + timeout
    while not job.is_finished:
        assert time.monotonic() < deadline, f"job stayed {job.status} ({job.stage})"
        time.sleep(0.1)
        job.refresh_from_db()
        if job.status == "running" and (not stages or stages[-1] != job.stage):
            stages.append(job.stage)
    return job, stages


def test_a_comparison_runs_on_the_worker_and_the_next_learner_gets_it_at_once(
    owner, classmate, owner_client, classmate_client, worker
):
    response = owner_client.post("/jobs/quantization/", {"prompt": "The capital of France is"})
    job = Job.objects.get(owner=owner)
    assert response.status_code == 302 and response["Location"] == job.get_absolute_url()
    job, stages = watch(job)
    assert job.status == "succeeded", job.message
    assert any("(8-bit)" in stage for stage in stages) and any("(4-bit)" in stage for stage in stages)

    fp32, int8, nf4 = job.metrics["variants"]
    assert fp32["footprint_bytes"] > int8["footprint_bytes"] > nf4["footprint_bytes"]
    assert fp32["kl_from_fp32"] == 0 and int8["kl_from_fp32"] > 0 and nf4["kl_from_fp32"] > 0
    assert [v["candidates"][0]["text"] for v in (fp32, int8, nf4)] == [" Paris"] * 3
    html = owner_client.get(job.get_absolute_url()).content.decode()
    assert 'data-testid="quant-table"' in html and 'data-testid="candidates-nf4"' in html
    assert "Finished in" in html and "ws-connect" not in html

    # Another learner, the same prompt: their own finished job at once, and the worker never sees it.
    response = classmate_client.post("/jobs/quantization/", {"prompt": "The capital of France is"}, **HTMX)
    assert response.status_code == 200 and 'data-testid="reused"' in response.content.decode()
    copy = Job.objects.get(owner=classmate)
    assert copy.status == "succeeded" and copy.metrics["variants"] == job.metrics["variants"]
    time.sleep(0.5)
    assert str(copy.code) not in worker.output()


def test_a_running_comparison_is_cancelled_and_keeps_nothing(owner, owner_client, worker):
    owner_client.post("/jobs/quantization/", {"prompt": "Once upon a time"})
    job = Job.objects.get(owner=owner)
    deadline = time.monotonic() + 120
    while "bit)" not in job.stage:  # loading or measuring one of the variants
        assert time.monotonic() < deadline and not job.is_finished, (job.status, job.stage)
        time.sleep(0.05)
        job.refresh_from_db()
    html = owner_client.post(f"/jobs/{job.code}/cancel/", **HTMX).content.decode()
    assert "Stopping at the next step…" in html

    job = wait_for(job, "cancelled", "succeeded", "failed", timeout=60)
    assert job.status == "cancelled" and job.message == "Cancelled while it ran; nothing was kept."
    assert job.metrics == {} and job.progress < 1
    worker.wait_for_log(f"job {job.code} cancelled")
    # Nothing was cached: the same prompt again is a new job.
    response = owner_client.post("/jobs/quantization/", {"prompt": "Once upon a time"}, **HTMX)
    assert response.status_code == 201
    again = Job.objects.exclude(pk=job.pk).get(owner=owner)
    owner_client.post(f"/jobs/{again.code}/cancel/")  # leave the worker idle for the next tests
    wait_for(again, "cancelled", timeout=30)


@pytest.mark.asyncio
async def test_the_owner_watches_it_live_over_the_jobs_websocket(owner, worker):
    job, reused = await database_sync_to_async(request_comparison)(owner, "Two plus two is")
    assert not reused
    communicator, connected = await connect(job, owner)
    assert connected
    frames = await frames_until_closed(communicator, timeout=180)
    await communicator.disconnect()
    assert any("(8-bit)…" in frame for frame in frames) and any("<progress" in frame for frame in frames)
    assert 'data-status="succeeded"' in frames[-1] and 'data-testid="quant-table"' in frames[-1]
    assert 'data-testid="candidates-nf4"' in frames[-1]
