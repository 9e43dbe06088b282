"""Celery tasks: thin shells that take a job id and hand it to its runner.

Nothing here imports torch; a kind of job that needs it imports it inside its runner, so the
worker's parent process stays small and only the child that runs such a job loads it.
"""

from __future__ import annotations

from celery import Task, shared_task

from workers.jobs.actions import reap_stale_jobs
from workers.jobs.runner import worker_name
from workers.jobs.tokenizer import TokenizerJobRunner
from workers.models import Job


@shared_task(bind=True, ignore_result=True)
def train_tokenizer(self: Task, job_id: int) -> str:
    return TokenizerJobRunner.execute(job_id, worker_name(self.request.hostname), soft_time_limit(self))


def soft_time_limit(task: Task) -> float | None:
    """This run's soft time limit: one given when it was sent (timelimit=(hard, soft)), else the setting's."""
    return (task.request.timelimit or (None, None))[1]


@shared_task(ignore_result=True)
def reap_jobs() -> int:
    """Run by beat every JOB_REAPER_INTERVAL seconds (settings.CELERY_BEAT_SCHEDULE)."""
    return reap_stale_jobs()


# Which task runs each kind of job; its queue comes from settings.CELERY_TASK_ROUTES.
TASKS = {Job.Kind.TOKENIZER: train_tokenizer}


def task_for_kind(kind: str) -> Task:
    return TASKS[kind]
