"""{% tokenizer_lab %}: what the tokenizer lab needs, wherever it is included (a lesson, its page)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import template
from django.conf import settings

from workers.forms import LoraJobForm, TokenizerJobForm, initial_corpus
from workers.jobs.panel import job_panel_context, lab_jobs
from workers.models import Job

register = template.Library()


@register.simple_tag(takes_context=True)
def tokenizer_lab(context: template.Context, options: dict | None = None) -> dict[str, Any]:
    """The lab's form (the view's, with its errors, when there is one), the job to show live
    (the one just submitted, else the learner's active one) and their recent tokenizer jobs.
    """
    form = context.get("lab_form")
    if form is None:
        corpus = initial_corpus((options or {}).get("corpus"))
        form = TokenizerJobForm(upload_limit=settings.JOB_UPLOAD_MAX_BYTES, initial={"corpus": corpus})
    job, recent = lab_jobs(context, Job.Kind.TOKENIZER)
    return {"form": form, "panel": job_panel_context(job) if job else None, "recent": recent}


@register.filter
def thousands(value: Any) -> str:
    """12345 -> "12,345"."""
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return ""


@register.filter
def duration(value: timedelta | None) -> str:
    """A job's duration as people say it: "0.8 s", "42 s", "3 min 05 s" (never broken across lines)."""
    if value is None:
        return "–"
    seconds = value.total_seconds()
    if seconds < 10:
        return f"{seconds:.1f}\u00a0s"
    if seconds < 60:
        return f"{seconds:.0f}\u00a0s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}\u00a0min {seconds:02d}\u00a0s"


@register.filter
def megabytes(value: Any) -> str:
    """538060288 -> "538" (millions of bytes, as the lessons count them)."""
    try:
        return f"{int(value) / 1e6:,.0f}"
    except (TypeError, ValueError):
        return ""


@register.simple_tag(takes_context=True)
def lora_lab(context: template.Context, options: dict | None = None) -> dict[str, Any]:
    """The LoRA lab's form (the view's, with its errors, when there is one), the job to show live
    (the one just submitted, else the learner's active one) and their recent LoRA jobs.
    """
    from workers.jobs.lora_lab import blank_lora_form

    form = context.get("lab_form")
    if not isinstance(form, LoraJobForm):
        form = blank_lora_form((options or {}).get("dataset"))
    job, recent = lab_jobs(context, Job.Kind.LORA)
    return {"form": form, "panel": job_panel_context(job) if job else None, "recent": recent}
