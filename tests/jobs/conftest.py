"""Fixtures for the jobs tests: job folders of their own, a real worker, jobs in known states.

Tests that need the worker use @pytest.mark.django_db(transaction=True): the worker is another
process and sees only committed rows (of the same test database: a file for SQLite, the test
database on PostgreSQL). Tests in a rolled-back transaction send no task at all, since jobs are
enqueued on commit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings

from tests.jobs.worker import Worker, database_url, purge_job_queues
from workers.jobs import submit_job
from workers.jobs.tokenizer import TokenizerJobRunner
from workers.models import Job

# Fast heartbeats and a quick reaper, so a killed worker's job is failed within seconds.
WORKER_TIMINGS = {"JOB_HEARTBEAT_SECONDS": "1", "JOB_HEARTBEAT_TIMEOUT": "5", "JOB_REAPER_INTERVAL": "1"}

TINY_TEXT = (
    "the cat sat on the mat. the cat ate the rat. then the cat sat on the hat.\n"
    "there the cat and the rat sat together, and that was that.\n"
) * 20


@pytest.fixture(scope="session", autouse=True)
def job_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Artifacts and uploads in a temporary folder, never in the developer's var/."""
    root = tmp_path_factory.mktemp("jobs")
    with override_settings(ARTIFACTS_DIR=root / "artifacts", UPLOADS_DIR=root / "uploads"):
        yield root


@pytest.fixture(scope="session")
def worker(django_db_setup, django_db_blocker, job_dirs: Path, tmp_path_factory) -> Iterator[Worker]:
    with django_db_blocker.unblock():
        url = database_url(connection.settings_dict)
    env = {
        **os.environ,
        **WORKER_TIMINGS,
        "DJANGO_SETTINGS_MODULE": "courseapp.settings_test",
        "DATABASE_URL": url,
        "REDIS_URL": settings.REDIS_URL,
        "ARTIFACTS_DIR": str(settings.ARTIFACTS_DIR),
        "UPLOADS_DIR": str(settings.UPLOADS_DIR),
    }
    purge_job_queues()
    folder = tmp_path_factory.mktemp("worker")
    started = Worker(env, folder / "worker.log", beat_schedule=folder / "beat-schedule")
    yield started
    started.stop()


def wait_for(job: Job, *statuses: str, timeout: float = 30) -> Job:
    """Polls the row until the job is in one of `statuses`."""
    deadline = time.monotonic() + timeout
    while True:
        job.refresh_from_db()
        if job.status in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job stayed {job.status} ({job.stage}); wanted {statuses}")
        time.sleep(0.03)


def tokenizer_params(corpus: str = "course", vocab_size: int = 300, **extra) -> dict:
    return {
        "corpus": corpus,
        "vocab_size": vocab_size,
        "min_frequency": 2,
        "special_tokens": ["<|endoftext|>"],
        **extra,
    }


@pytest.fixture
def make_job(owner):
    """Submits a tokenizer job the way the lab does (params already valid)."""

    def make(user=None, **params) -> Job:
        return submit_job(user or owner, Job.Kind.TOKENIZER, tokenizer_params(**params))

    return make


@pytest.fixture
def finished_job(owner) -> Job:
    """A succeeded tokenizer job on a tiny corpus, run in this process by the real runner.

    For the pages' tests, which need a finished job but not the queue: inside the test's
    transaction nothing is sent to a worker.
    """
    job = submit_job(owner, Job.Kind.TOKENIZER, tokenizer_params(corpus="course", vocab_size=400))
    assert TokenizerJobRunner.execute(job.pk, "in-process") == "succeeded"
    job.refresh_from_db()
    return job
