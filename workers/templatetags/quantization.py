"""{% quantization_lab %}: what the quantization lab needs, wherever it is included (a lesson, its page)."""

from __future__ import annotations

from typing import Any

from django import template

from workers.forms import QuantizationForm
from workers.jobs.panel import job_panel_context, lab_jobs
from workers.jobs.quantization import DEFAULT_PROMPT, example_for, result_context
from workers.models import Job

register = template.Library()


@register.simple_tag(takes_context=True)
def quantization_lab(context: template.Context, options: dict | None = None) -> dict[str, Any]:
    """The lab's form (the view's, with its errors, when there is one); the job to show (the one
    just submitted, else the learner's active one, else their newest finished one); their other
    recent comparisons; and, when there is no job of theirs to show, the newest comparison of the
    lesson's prompt (or the default one) by anyone, as an example (the numbers only).
    """
    prompt = (options or {}).get("prompt") or DEFAULT_PROMPT
    form = context.get("lab_form") or QuantizationForm(initial={"prompt": prompt})
    job, recent = lab_jobs(context, Job.Kind.QUANTIZATION, fetch=6, or_finished=True)
    example = None
    if job is None:
        found = example_for(prompt)
        example = result_context(found) if found is not None else None
    return {
        "form": form,
        "panel": job_panel_context(job) if job else None,
        "example": example,
        "recent": recent,
    }
