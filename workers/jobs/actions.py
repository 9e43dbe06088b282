"""What the web, the admin, the worker and the reaper do to jobs.

Each action changes the Job row first (a conditional UPDATE in workers.models) and then tells
the job's live pages through the channel layer, so a page never shows a state the database
does not hold.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any
from uuid import UUID

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.http import Http404
from django.shortcuts import get_object_or_404
from django.utils import timezone

from workers.jobs import files
from workers.models import Job

logger = logging.getLogger(__name__)

REAPED_MESSAGE = (
    "The worker running this job stopped without finishing it (it was restarted, ran out of "
    "memory or was killed). Nothing was kept. Submit the job again."
)


class QuotaExceeded(Exception):
    """The learner has as many jobs queued or running as they may; the message says so."""


def get_job_for_user(user: Any, code: UUID) -> Job:
    """The job with this code if `user` owns it, else 404: to anyone else it does not exist.

    The one access check for jobs: pages, downloads, cancel and the websocket all use it.
    """
    if not getattr(user, "is_authenticated", False):
        raise Http404("No such job.")
    return get_object_or_404(Job.objects.for_owner(user), code=code)


# --- Telling live pages ------------------------------------------------------------------------------


def publish(job: Job) -> None:
    """Tells the job's websocket group that the job changed; the consumers render it anew.

    A channel layer that is down must not fail the job: the pages also poll.
    """
    _group_send(job.group_name)


def publish_queue(queue: str) -> None:
    """Queue positions moved (a job started or left the queue): tell every job still waiting."""
    for code in Job.objects.waiting_in(queue).values_list("code", flat=True)[:200]:
        _group_send(Job.group_for(code))


def _group_send(group: str) -> None:
    try:
        async_to_sync(get_channel_layer().group_send)(group, {"type": "job.update"})
    except Exception:
        logger.warning("could not publish an update to %s", group, exc_info=True)


def save_progress(job: Job, stage: str, progress: float | None) -> bool:
    """Saves a running job's stage and progress (a heartbeat too), then publishes it.

    False if the job is no longer running (the reaper failed it): its worker should give up.
    """
    if not job.report(stage, progress):
        return False
    publish(job)
    return True


# --- Submitting, cancelling, deleting ----------------------------------------------------------------


def submit_job(owner: Any, kind: str, params: dict[str, Any], upload: UploadedFile | None = None) -> Job:
    """Creates a queued job (storing its upload) and sends it to its queue once committed.

    Raises QuotaExceeded when the owner already has JOB_MAX_ACTIVE_PER_USER jobs queued or running.
    """
    from workers.tasks import task_for_kind  # the tasks module imports this one

    task = task_for_kind(kind)
    code = uuid.uuid4()
    try:
        with transaction.atomic():
            # Lock the learner's row so two quick submissions count each other: on PostgreSQL with
            # this lock, on SQLite because its IMMEDIATE transactions take the write lock up front.
            get_user_model().objects.select_for_update().filter(pk=owner.pk).first()
            active = Job.objects.for_owner(owner).active().count()
            limit = settings.JOB_MAX_ACTIVE_PER_USER
            if active >= limit:
                raise QuotaExceeded(
                    f"You already have {active} job{'s' if active != 1 else ''} queued or running, the most "
                    f"you may have at once ({limit}). Wait for one to finish, or cancel one on the My jobs page."
                )
            if upload is not None:
                files.store_upload(code, upload.chunks)
            job = Job.objects.create(
                code=code, owner=owner, kind=kind, queue=settings.CELERY_TASK_ROUTES[task.name]["queue"], params=params
            )
            # After the commit: a worker must never receive the id of a row it cannot see yet.
            task.delay_on_commit(job.pk)
    except BaseException:
        files.remove_upload(code)
        raise
    return job


def cancel_job(job: Job) -> str:
    """Cancels a queued job at once, or asks a running one to stop. See Job.cancel for the result."""
    outcome = job.cancel()
    if outcome == "cancelled":
        # Its message stays in the broker; the worker that receives it finds nothing to claim.
        files.remove_upload(job.code)
        publish(job)
        publish_queue(job.queue)
    elif outcome == "requested":
        publish(job)
    return outcome


def delete_job(job: Job) -> None:
    """Deletes a finished job; its artifacts and upload follow on commit (workers.models). A
    queued or running job must be cancelled first.
    """
    if not job.is_finished:
        raise ValueError("only a finished job can be deleted")
    job.delete()


# --- The reaper ------------------------------------------------------------------------------------------


def reap_stale_jobs() -> int:
    """Fails running jobs whose worker has not sent a heartbeat for JOB_HEARTBEAT_TIMEOUT seconds.

    A worker killed mid-job (SIGKILL, out of memory, a lost machine) cannot say so itself; without
    this its job would show "running" forever. Returns how many jobs it failed.
    """
    cutoff = timezone.now() - timedelta(seconds=settings.JOB_HEARTBEAT_TIMEOUT)
    reaped = 0
    for job in Job.objects.stale(cutoff):
        if _requeue_to_resume(job, cutoff):
            reaped += 1
            continue
        # Conditional: a heartbeat that lands now, or a job that just finished, wins over the reaper.
        if job.fail_if_stale(cutoff, REAPED_MESSAGE):
            files.remove_job_files(job.code)  # whatever the dead worker left, complete or not
            publish(job)
            reaped += 1
            logger.warning("reaped job %s: no heartbeat since %s (worker %s)", job.code, job.heartbeat_at, job.worker)
    return reaped


def _requeue_to_resume(job: Job, cutoff: Any) -> bool:
    """Queues a dead worker's job again if it left a checkpoint to resume from (LoRA jobs; see
    workers.jobs.lora), and sends its task. False if it cannot resume: the reaper fails it.
    """
    from workers.jobs.lora import requeue_note, resume_point  # it imports this module
    from workers.tasks import task_for_kind

    step = resume_point(job)
    if step is None:
        return False
    stage, metrics = requeue_note(job, step)
    if not job.requeue_if_stale(cutoff, stage, metrics):
        return False
    # On commit (the reaper runs outside a transaction: at once), like submit_job.
    task_for_kind(job.kind).delay_on_commit(job.pk)
    publish(job)
    publish_queue(job.queue)
    logger.warning("job %s lost its worker (%s); queued again to resume from step %s", job.code, job.worker, step)
    return True
