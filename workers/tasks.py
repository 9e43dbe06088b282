"""Celery tasks: thin shells that take a job id and hand it to its runner.

Nothing here imports torch; a kind of job that needs it imports it inside its runner, so the
worker's parent process stays small and only the child that runs such a job loads it.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from celery.signals import worker_ready
from django.db import DatabaseError, connections

from workers.jobs.actions import reap_stale_jobs
from workers.jobs.lora import LoraJobRunner
from workers.jobs.quantization import QuantizationJobRunner
from workers.jobs.runner import worker_name
from workers.jobs.tokenizer import TokenizerJobRunner
from workers.models import Job

logger = logging.getLogger(__name__)


@shared_task(bind=True, ignore_result=True)
def train_tokenizer(self: Task, job_id: int) -> str:
    return TokenizerJobRunner.execute(job_id, worker_name(self.request.hostname), soft_time_limit(self))


@shared_task(bind=True, ignore_result=True)
def compare_quantizations(self: Task, job_id: int) -> str:
    return QuantizationJobRunner.execute(job_id, worker_name(self.request.hostname), soft_time_limit(self))


@shared_task(bind=True, ignore_result=True)
def train_lora(self: Task, job_id: int) -> str:
    return LoraJobRunner.execute(job_id, worker_name(self.request.hostname), soft_time_limit(self))


def soft_time_limit(task: Task) -> float | None:
    """This run's soft time limit: one given when it was sent (timelimit=(hard, soft)), else the setting's."""
    return (task.request.timelimit or (None, None))[1]


@shared_task(ignore_result=True)
def reap_jobs() -> int:
    """Run by beat every JOB_REAPER_INTERVAL seconds (settings.CELERY_BEAT_SCHEDULE)."""
    return reap_stale_jobs()


# Which task runs each kind of job; its queue comes from settings.CELERY_TASK_ROUTES.
TASKS = {
    Job.Kind.TOKENIZER: train_tokenizer,
    Job.Kind.LORA: train_lora,
    Job.Kind.QUANTIZATION: compare_quantizations,
}


def task_for_kind(kind: str) -> Task:
    return TASKS[kind]


@worker_ready.connect
def resend_queued_jobs(**kwargs: Any) -> int:
    """Sends the message of every queued job again when a worker starts. Returns how many.

    A Redis that restarted has lost the messages of the jobs waiting in it (the private one of
    `./course run` keeps nothing), and those jobs would wait forever. A job whose message
    survived now has two; whichever comes second finds the job claimed and does nothing.
    """
    try:
        jobs = list(Job.objects.filter(status=Job.Status.QUEUED).order_by("pk").values_list("pk", "kind"))
    except DatabaseError:  # e.g. a worker started before the web service migrated the database
        logger.warning("could not look for queued jobs to send again", exc_info=True)
        return 0
    for pk, kind in jobs:
        task_for_kind(kind).delay(pk)
    # This runs in the worker's parent process, which forks new children later: leave them no
    # open database connection to inherit.
    connections.close_all()
    return len(jobs)
