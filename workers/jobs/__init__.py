"""Training jobs: submitting, running on the Celery queues, cancelling, reaping, and their files.

workers.models        the Job and Artifact rows, and their state changes
workers.jobs.actions  submit, cancel, delete, publish to live pages, the reaper, the access check
workers.jobs.runner   the one way a job runs (claim, run, keep artifacts, succeed or fail)
workers.jobs.files    where a job's files live; written under a temporary name, then renamed
workers.jobs.tokenizer  the tokenizer lab's job and the helpers of its pages
"""

from workers.jobs.actions import (
    QuotaExceeded,
    cancel_job,
    delete_job,
    get_job_for_user,
    publish,
    reap_stale_jobs,
    save_progress,
    submit_job,
)
from workers.jobs.tokenizer import trained_tokenizers_for

__all__ = [
    "QuotaExceeded",
    "cancel_job",
    "delete_job",
    "get_job_for_user",
    "publish",
    "reap_stale_jobs",
    "save_progress",
    "submit_job",
    "trained_tokenizers_for",
]
