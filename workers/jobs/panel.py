"""The context of a job's live panel (templates/jobs/_job.html).

Its page, its polling, its websocket (workers.consumers.JobConsumer) and the tokenizer lab all
render the panel from this one function, so they cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from workers.jobs.tokenizer import comparison, merge_step
from workers.models import Job


def job_panel_context(job: Job, *, step: Any = 0, text: str | None = None, compare: str | None = None) -> dict:
    result = None
    if job.kind == Job.Kind.TOKENIZER and job.status == Job.Status.SUCCEEDED:
        result = {
            "metrics": job.metrics,
            "artifacts": list(job.artifacts.all()),
            "stepper": merge_step(job, step, text),
            "comparison": comparison(job, compare),
        }
    return {"job": job, "position": job.queue_position(), "result": result}
