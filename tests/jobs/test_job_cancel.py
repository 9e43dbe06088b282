"""Cancelling on the real worker: a queued job leaves the queue at once; a running one stops at its next step."""

from __future__ import annotations

import pytest

from tests.jobs.conftest import wait_for
from workers.jobs import files

pytestmark = pytest.mark.django_db(transaction=True)

HTMX = {"HTTP_HX_REQUEST": "true"}


def long_job(make_job, user=None):
    """Shakespeare into 32,000 tokens: a couple of seconds, long enough to catch it running."""
    return make_job(user, corpus="shakespeare", vocab_size=32000)


def test_a_queued_job_shows_its_place_and_is_cancelled_at_once(make_job, classmate, owner_client, worker):
    running = wait_for(long_job(make_job), "running")
    mine = make_job()
    theirs = make_job(classmate)
    assert "Waiting in the queue: next to start." in owner_client.get(mine.get_absolute_url()).content.decode()
    assert theirs.queue_position() == 2

    html = owner_client.post(f"/jobs/{mine.code}/cancel/", **HTMX).content.decode()
    assert "Cancelled: the job was removed from the queue." in html and "Cancelled before it started." in html
    mine.refresh_from_db()
    assert mine.status == "cancelled" and mine.started_at is None
    assert theirs.queue_position() == 1  # it moved up

    owner_client.post(f"/jobs/{running.code}/cancel/")
    wait_for(theirs, "succeeded")
    # Its message was still in the queue: the worker took it after the running job and did nothing.
    worker.wait_for_log(f"job {mine.code} is cancelled already; nothing to do")
    mine.refresh_from_db()
    assert mine.status == "cancelled" and not files.artifact_dir(mine.code).exists()


def test_a_running_job_stops_at_its_next_step_and_keeps_nothing(make_job, owner_client, worker):
    job = wait_for(long_job(make_job), "running")
    html = owner_client.post(f"/jobs/{job.code}/cancel/", **HTMX).content.decode()
    assert "Stopping at the next step…" in html
    assert 'data-testid="cancel-job"' not in html  # no second cancel button

    job = wait_for(job, "cancelled", timeout=20)
    assert job.message == "Cancelled while it ran; nothing was kept."
    assert job.progress < 1 and not job.artifacts.exists()
    assert not files.artifact_dir(job.code).exists()
    worker.wait_for_log(f"job {job.code} cancelled")  # logged just after the row changed


def test_cancelling_a_finished_job_changes_nothing(make_job, owner_client, worker):
    job = wait_for(make_job(), "succeeded")
    html = owner_client.post(f"/jobs/{job.code}/cancel/", **HTMX).content.decode()
    assert "This job had already finished." in html
    job.refresh_from_db()
    assert job.status == "succeeded" and job.artifacts.count() == 1
