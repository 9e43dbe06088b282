"""Jobs: the truth about every piece of work done outside the request cycle.

A Job row says what was asked (kind, params), by whom, and where it stands (status, stage,
progress, heartbeat). Every change of status is a conditional UPDATE on the status it expects,
so two processes can never both move a job: a redelivered task message, a double click, the
reaper and a cancel can race freely, and exactly one of them wins.

    queued ──claim──> running ──succeed──> succeeded
       │                 ├──fail / reaper──> failed
       └──cancel──> cancelled <──cancel requested, seen at a step boundary──┘
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.urls import reverse
from django.utils import timezone

from workers.training.corpora import BUILTIN_CORPORA


class JobQuerySet(models.QuerySet):
    def for_owner(self, user: Any) -> JobQuerySet:
        return self.filter(owner=user)

    def active(self) -> JobQuerySet:
        return self.filter(status__in=Job.ACTIVE)

    def finished(self) -> JobQuerySet:
        return self.filter(status__in=Job.TERMINAL)

    def waiting_in(self, queue: str) -> JobQuerySet:
        return self.filter(status=Job.Status.QUEUED, queue=queue)

    def stale(self, cutoff: datetime) -> JobQuerySet:
        """Running jobs whose worker has not been heard from since `cutoff`."""
        return self.filter(status=Job.Status.RUNNING, heartbeat_at__lt=cutoff)


class Job(models.Model):
    class Kind(models.TextChoices):
        TOKENIZER = "tokenizer", "Tokenizer training"
        LORA = "lora", "LoRA fine-tuning"
        QUANTIZATION = "quantization", "Quantization comparison"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE = (Status.QUEUED, Status.RUNNING)
    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    # The Celery queue the job was sent to ("cpu" or "gpu"): the queue position counts within it.
    queue = models.CharField(max_length=20)
    # Validated when the job is submitted, and again by the worker before it runs.
    params = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    stage = models.CharField(max_length=80, blank=True)
    # 0 to 1; None while the running step cannot tell how far it is.
    progress = models.FloatField(null=True, blank=True, default=0.0)
    metrics = models.JSONField(default=dict, blank=True)
    # Shown to the learner when the job fails or is cancelled: what happened and what to do.
    message = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    # "hostname pid" of the worker process that claimed the job, for the admin and the logs.
    worker = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # Times the reaper put the job back in the queue to resume from its checkpoint (LoRA jobs).
    resumes = models.PositiveSmallIntegerField(default=0)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [
            models.Index(fields=["owner", "status"], name="job_owner_status"),
            models.Index(fields=["status", "queue"], name="job_status_queue"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {str(self.code)[:8]} ({self.status})"

    def get_absolute_url(self) -> str:
        return reverse("jobs:detail", args=[self.code])

    @staticmethod
    def group_for(code: uuid.UUID | str) -> str:
        """The channel-layer group a job's live pages listen on."""
        return f"job-{code}"

    @property
    def group_name(self) -> str:
        return self.group_for(self.code)

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def is_finished(self) -> bool:
        return self.status in self.TERMINAL

    @property
    def corpus_label(self) -> str:
        """What a tokenizer job trains on, for people: "Shakespeare's works", or “notes.txt”."""
        corpus = self.params.get("corpus", "")
        if corpus == "upload":
            return f"“{self.params.get('upload_name') or 'your file'}”"
        return BUILTIN_CORPORA.get(corpus, corpus)

    @property
    def dataset_label(self) -> str:
        """What a LoRA job trains on, for people: "Shakespeare's sonnets", or “faq.jsonl”."""
        from workers.training.lora import BUILTIN_DATASETS  # no torch: plain data

        dataset = self.params.get("dataset", "")
        if dataset == "upload":
            return f"“{self.params.get('upload_name') or 'your file'}”"
        return BUILTIN_DATASETS.get(dataset, dataset).split(" (")[0]

    @property
    def summary(self) -> str:
        """What was asked, in a few words: "Shakespeare's works, vocabulary 8,000"."""
        if self.kind == self.Kind.TOKENIZER:
            return f"{self.corpus_label}, vocabulary {self.params.get('vocab_size', 0):,}"
        if self.kind == self.Kind.LORA:
            return f"{self.dataset_label}, rank {self.params.get('rank', 0)}"
        if self.kind == self.Kind.QUANTIZATION:
            prompt = self.params.get("prompt", "")
            shown = prompt if len(prompt) <= 40 else prompt[:39].rstrip() + "…"
            return f"“{shown}” at 32, 8 and 4 bits"
        return self.get_kind_display()

    @property
    def duration(self) -> timedelta | None:
        if self.started_at is None:
            return None
        return (self.finished_at or timezone.now()) - self.started_at

    def queue_position(self) -> int | None:
        """1 for the next job to start in its queue; None unless queued. Rows are numbered in order of creation."""
        if self.status != self.Status.QUEUED:
            return None
        return Job.objects.waiting_in(self.queue).filter(pk__lt=self.pk).count() + 1

    # --- State changes: each a conditional UPDATE; True if this call made the change -------------

    def _move(self, expect: dict[str, Any], **changes: Any) -> bool:
        updated = Job.objects.filter(pk=self.pk, **expect).update(**changes)
        self.refresh_from_db()
        return bool(updated)

    def claim(self, worker: str) -> bool:
        """queued -> running. False if it was not queued: cancelled, or already claimed."""
        now = timezone.now()
        return self._move(
            {"status": self.Status.QUEUED},
            status=self.Status.RUNNING, started_at=now, heartbeat_at=now, worker=worker, stage="Starting", progress=0.0,
        )  # fmt: skip

    def report(self, stage: str, progress: float | None, metrics: dict[str, Any] | None = None) -> bool:
        """Progress and a heartbeat from the worker (and live metrics, if given). False if the
        job is no longer running."""
        changes: dict[str, Any] = {"stage": stage, "progress": progress, "heartbeat_at": timezone.now()}
        if metrics is not None:
            changes["metrics"] = metrics
            self.metrics = metrics
        updated = Job.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(**changes)
        self.stage, self.progress = stage, progress
        return bool(updated)

    def beat(self) -> bool:
        """A heartbeat alone, from a thread beside a long step. False if the job is no longer running."""
        return bool(Job.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(heartbeat_at=timezone.now()))

    def cancel_is_requested(self) -> bool:
        """Read fresh from the database: a cancel comes from another process."""
        return Job.objects.filter(pk=self.pk, cancel_requested=True).exists()

    def succeed(self, metrics: dict[str, Any]) -> bool:
        """running -> succeeded, unless a cancel was requested in the meantime."""
        return self._move(
            {"status": self.Status.RUNNING, "cancel_requested": False},
            status=self.Status.SUCCEEDED, metrics=metrics, stage="Done", progress=1.0, finished_at=timezone.now(),
        )  # fmt: skip

    def fail(self, message: str) -> bool:
        """running -> failed, with a message the learner can act on."""
        return self._move(
            {"status": self.Status.RUNNING}, status=self.Status.FAILED, message=message, finished_at=timezone.now()
        )

    def fail_if_stale(self, cutoff: datetime, message: str) -> bool:
        """running -> failed, only if still silent since `cutoff` (the reaper's move)."""
        return self._move(
            {"status": self.Status.RUNNING, "heartbeat_at__lt": cutoff},
            status=self.Status.FAILED, message=message, finished_at=timezone.now(),
        )  # fmt: skip

    def requeue_if_stale(self, cutoff: datetime, stage: str, metrics: dict[str, Any]) -> bool:
        """running -> queued, only if still silent since `cutoff` and no cancel was asked for:
        the reaper's move for a job that can resume from a checkpoint. Counts the resume.
        """
        return self._move(
            {"status": self.Status.RUNNING, "heartbeat_at__lt": cutoff, "cancel_requested": False},
            status=self.Status.QUEUED, stage=stage, metrics=metrics, worker="", resumes=models.F("resumes") + 1,
        )  # fmt: skip

    def cancel(self) -> str:
        """Cancels a queued job at once, or asks a running one to stop at its next step.

        Returns "cancelled", "requested" (running: the worker will stop it) or "finished"
        (too late: it had already ended).
        """
        now = timezone.now()
        if self._move(
            {"status": self.Status.QUEUED},
            status=self.Status.CANCELLED, message="Cancelled before it started.", finished_at=now,
        ):  # fmt: skip
            return "cancelled"
        if self.status == self.Status.RUNNING and (
            self.cancel_requested or self._move({"status": self.Status.RUNNING}, cancel_requested=True)
        ):
            return "requested"
        return "finished"

    def mark_cancelled(self) -> bool:
        """running -> cancelled: the worker saw the cancel request at a step boundary."""
        return self._move(
            {"status": self.Status.RUNNING},
            status=self.Status.CANCELLED, message="Cancelled while it ran; nothing was kept.", finished_at=timezone.now(),
        )  # fmt: skip


class Artifact(models.Model):
    """A finished file of a job, in its folder under settings.ARTIFACTS_DIR.

    A row exists only for a complete file: files are written under a temporary name and renamed,
    and the row is created in the same transaction that marks the job succeeded.
    """

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="artifacts")
    # A plain file name chosen by the job's code, never by a learner.
    name = models.CharField(max_length=100)
    size = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["job", "name"], name="artifact_name_per_job")]

    def __str__(self) -> str:
        return f"{self.job.code}/{self.name}"

    def get_absolute_url(self) -> str:
        return reverse("jobs:download", args=[self.job.code, self.name])


@receiver(post_delete, sender=Job)
def _remove_job_files(sender: type[Job], instance: Job, **kwargs: Any) -> None:
    """However a job is deleted (My jobs, its owner's account, the shell), its files go too,
    once the deletion is committed: a rolled-back delete keeps them.
    """
    from workers.jobs.files import remove_job_files  # workers.jobs imports this module

    code = instance.code
    transaction.on_commit(lambda: remove_job_files(code))
