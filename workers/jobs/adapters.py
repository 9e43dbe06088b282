"""Which LoRA adapters a learner may try on the shared model: their own finished jobs' only.

The model server trusts what the web side sends it, so this is the one place that decides:
the live exercises and the websocket API resolve a learner's choice here, and send the model
server the adapter file only when its job belongs to that learner and succeeded. Another
learner's adapter is "not found", exactly like one that never existed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.jobs import files
from workers.models import Job

# An adapter choice is the job's code, with ":best" for its best-validation checkpoint.
VARIANTS = {"": ("adapter.zip", ""), "best": ("adapter-best.zip", ", best validation loss")}
CHOICE_RE = re.compile(r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})(?::(best))?")
NOT_FOUND = "That adapter was not found among your finished fine-tuning jobs."


class AdapterNotFound(ValueError):
    pass


@dataclass(frozen=True)
class AdapterChoice:
    value: str  # what a form sends: "<job code>" or "<job code>:best"
    label: str
    path: Path

    @property
    def message(self) -> dict[str, str]:
        """What a model request carries (workers.inference.protocol)."""
        return {"key": self.value, "path": str(self.path)}


def adapters_for(user: Any) -> list[AdapterChoice]:
    """The learner's adapters, newest job first: each job's last weights, then its best ones."""
    if not getattr(user, "is_authenticated", False):
        return []
    jobs = (
        Job.objects.for_owner(user)
        .filter(kind=Job.Kind.LORA, status=Job.Status.SUCCEEDED)
        .prefetch_related("artifacts")
    )
    choices = []
    for job in jobs:
        names = {artifact.name for artifact in job.artifacts.all()}
        for variant, (name, note) in VARIANTS.items():
            if name in names:
                value = f"{job.code}:{variant}" if variant else str(job.code)
                label = f"{job.summary} · {job.created_at:%d %b %H:%M} · {str(job.code)[:8]}{note}"
                choices.append(AdapterChoice(value, label, files.artifact_path(job.code, name)))
    return choices


def adapter_for_user(user: Any, value: str) -> AdapterChoice:
    """The learner's adapter named by `value`. Raises AdapterNotFound for anything else."""
    match = CHOICE_RE.fullmatch(str(value).strip().lower())
    if match is None or not getattr(user, "is_authenticated", False):
        raise AdapterNotFound(NOT_FOUND)
    code, variant = match.group(1), match.group(2) or ""
    name = VARIANTS[variant][0]
    job = (
        Job.objects.for_owner(user)
        .filter(code=code, kind=Job.Kind.LORA, status=Job.Status.SUCCEEDED, artifacts__name=name)
        .first()
    )
    if job is None:
        raise AdapterNotFound(NOT_FOUND)
    label = f"{job.summary} · {str(job.code)[:8]}{VARIANTS[variant][1]}"
    return AdapterChoice(match.group(0), label, files.artifact_path(job.code, name))
