"""The one way a job runs: claim, run, keep the artifacts, succeed; or fail with a message.

A subclass implements run() for its kind of job: it reads self.job.params, calls the Django-free
code in workers.training, reports progress with self.report(), checks for a cancel with
self.check_cancel() between steps, writes files with self.write_artifact() and returns metrics.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction

from workers.jobs import files
from workers.jobs.actions import publish, publish_queue, save_progress
from workers.models import Artifact, Job

logger = logging.getLogger(__name__)

UNEXPECTED_MESSAGE = (
    "Something went wrong on our side while running this job; it has been logged. "
    "Try again, and tell your teacher if it keeps happening."
)


class JobError(Exception):
    """A problem the learner can fix (a bad file, a corpus that is gone). Shown to them as is."""


class JobCancelled(Exception):
    """The learner cancelled the job; it stops at a step boundary and keeps nothing."""


class JobLost(Exception):
    """The job stopped being this worker's (the reaper failed it): stop and keep nothing."""


class JobRunner:
    kind: ClassVar[str]
    # Progress is written (and published) at most this often, plus on every change of stage.
    report_interval: ClassVar[float] = 0.25
    # A job the reaper may queue again to resume (see workers.jobs.lora) keeps its upload and
    # scratch folder when it finds the job no longer its own: the resumed run needs them.
    keeps_files_when_lost: ClassVar[bool] = False

    def __init__(self, job: Job, time_limit: float | None = None) -> None:
        self.job = job
        self.time_limit = time_limit or settings.CELERY_TASK_SOFT_TIME_LIMIT
        self.artifacts: list[tuple[str, int]] = []
        self._last_report = 0.0
        self._last_cancel_check = 0.0

    @classmethod
    def execute(cls, job_id: int, worker: str, time_limit: float | None = None) -> str:
        """Runs the job unless it is not queued any more. Returns what happened, for the log.

        Safe to call any number of times for the same job: only the call whose claim succeeds
        runs it; the others (a redelivered message, a second click) return "skipped".
        `time_limit` is the task's soft time limit in seconds, for the message if it is reached.
        """
        job = Job.objects.filter(pk=job_id).first()
        if job is None:
            logger.info("job %s is gone (deleted); nothing to do", job_id)
            return "missing"
        if job.kind != cls.kind:
            logger.error("job %s is a %s job, not %s; not running it", job.code, job.kind, cls.kind)
            return "wrong kind"
        if not job.claim(worker):
            logger.info("job %s is %s already; nothing to do", job.code, job.status)
            return "skipped"
        logger.info("job %s started on %s", job.code, worker)
        publish(job)
        publish_queue(job.queue)
        return cls(job, time_limit)._run()

    def run(self) -> dict[str, Any]:
        """Does the work; returns the metrics to keep. Raise JobError for the learner's mistakes."""
        raise NotImplementedError

    # --- Helpers for run() -----------------------------------------------------------------------

    def report(self, stage: str, progress: float | None) -> None:
        """Saves and publishes progress, which is also the job's heartbeat.

        A new stage is saved at once; new progress at most every report_interval seconds, except
        that every new tenth is shown (a fast stage still moves the bar); the same progress again
        only as a heartbeat, every JOB_HEARTBEAT_SECONDS.
        """
        now = time.monotonic()
        if stage == self.job.stage:
            since = now - self._last_report
            if since < self.report_interval and not _new_tenth(self.job.progress, progress):
                return
            if progress == self.job.progress and since < settings.JOB_HEARTBEAT_SECONDS:
                return
        self._last_report = now
        if not save_progress(self.job, stage, progress):
            raise JobLost

    def should_stop(self) -> bool:
        """True once the learner asked to cancel. Reads the database at most every report_interval."""
        now = time.monotonic()
        if now - self._last_cancel_check < self.report_interval:
            return False
        self._last_cancel_check = now
        return self.job.cancel_is_requested()

    def check_cancel(self) -> None:
        """A step boundary: stop here if the learner asked to cancel."""
        if self.job.cancel_is_requested():
            raise JobCancelled

    def write_artifact(self, name: str, write: Callable[[Path], None]) -> None:
        """Writes one of the job's files through a temporary name; it counts once the job succeeds."""
        size = files.write_atomically(files.artifact_path(self.job.code, name), write)
        self.artifacts.append((name, size))

    # --- The run itself ---------------------------------------------------------------------------

    def _run(self) -> str:
        job = self.job
        outcome = "failed"
        try:
            metrics = self.run()
            self.check_cancel()
            with transaction.atomic():
                if not job.succeed(metrics):
                    # A cancel landed after the last check, or the reaper gave up on us.
                    raise JobCancelled if job.cancel_requested else JobLost
                Artifact.objects.bulk_create(Artifact(job=job, name=name, size=size) for name, size in self.artifacts)
            outcome = "succeeded"
        except JobCancelled:
            files.remove_artifacts(job.code)
            job.mark_cancelled()
            outcome = "cancelled"
        except JobLost:
            files.remove_artifacts(job.code)
            outcome = "lost"
        except JobError as exc:
            files.remove_artifacts(job.code)
            job.fail(str(exc))
        except SoftTimeLimitExceeded:
            files.remove_artifacts(job.code)
            job.fail(
                f"The job ran longer than its time limit ({_spoken(self.time_limit)}) and was stopped; nothing was "
                "kept. Try a smaller corpus or a smaller vocabulary."
            )
        except Exception:
            logger.exception("job %s failed unexpectedly", job.code)
            files.remove_artifacts(job.code)
            job.fail(UNEXPECTED_MESSAGE)
        finally:
            # The upload was only needed while the job ran.
            if outcome != "lost" or not self.keeps_files_when_lost:
                files.remove_upload(job.code)
        publish(job)
        logger.info("job %s %s", job.code, outcome)
        return outcome


def _spoken(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:g} second{'s' if seconds != 1 else ''}"
    return f"{seconds / 60:g} minutes"


def worker_name(hostname: str | None) -> str:
    return f"{hostname or 'worker'} pid {os.getpid()}"


def _new_tenth(before: float | None, after: float | None) -> bool:
    return before is not None and after is not None and int(after * 10) > int(before * 10)
