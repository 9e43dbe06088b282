"""The context of a job's live panel (templates/jobs/_job.html).

Its page, its polling, its websocket (workers.consumers.JobConsumer) and the tokenizer lab all
render the panel from this one function, so they cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from workers.jobs.lora import lora_context
from workers.jobs.quantization import result_context
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
    elif job.kind == Job.Kind.QUANTIZATION and job.status == Job.Status.SUCCEEDED:
        result = {"quantization": result_context(job)}
    # A LoRA job's curve, numbers and events show while it runs too, not only once it is done.
    lora = lora_context(job) if job.kind == Job.Kind.LORA else None
    return {"job": job, "position": job.queue_position(), "result": result, "lora": lora}


def lab_jobs(context: Any, kind: str, *, fetch: int = 5, or_finished: bool = False) -> tuple[Job | None, list[Job]]:
    """What a lab shows of a learner's jobs of `kind`: the job for its live panel (the one just
    submitted, `lab_job` in the template context, else their active one, else with `or_finished`
    their newest succeeded one) and up to five of their other recent ones, newest first, out of
    the `fetch` newest."""
    job = context.get("lab_job")
    user = context.get("user")
    recent: list[Job] = []
    if user is not None and user.is_authenticated:
        recent = list(Job.objects.for_owner(user).filter(kind=kind)[:fetch])
        if job is None:
            job = next((candidate for candidate in recent if candidate.is_active), None)
        if job is None and or_finished:
            job = next((candidate for candidate in recent if candidate.status == Job.Status.SUCCEEDED), None)
    return job, [candidate for candidate in recent if job is None or candidate.pk != job.pk][:5]
