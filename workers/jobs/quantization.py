"""The quantization lab's job: the course model at 32, 8 and 4 bits, measured side by side.

The measuring itself is workers.training.quantize (no Django); this module is the shell around
it: submitting (or reusing) a comparison, the runner that stores its results in job.metrics,
and what the pages show of them.

A cached one-off. The comparison depends only on the prompt, the settings, the model and the
library versions, never on who asked, and it costs three model loads (tens of seconds of a
CPU worker). So `request_comparison` first looks for a succeeded comparison with the same
`cache_key` (a hash of all of those) by anyone:

- the learner's own one (or their identical one still queued or running) is shown again;
- someone else's is copied into a new job of this learner's, already succeeded, with the same
  metrics and timings and `metrics["reused"]` saying when it was computed; nothing runs;
- otherwise a real job is submitted (subject to the usual quota).

Copying keeps the one access rule of jobs intact (a job is its owner's only; anyone else gets
a 404): no learner ever sees another's job, its code or its page, only numbers they would have
got themselves; and their own copy stays on My jobs even if the original is deleted. Two
identical submissions at the same moment may both run; the second result is as good as the
first. Anonymous readers (and learners with no comparison of their own yet) are shown the newest
succeeded comparison of the lesson's prompt or the default one, if there is one: the numbers
only, with no link to its job.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from workers.inference.loading import model_threads
from workers.jobs.actions import submit_job
from workers.jobs.runner import JobCancelled, JobError, JobRunner
from workers.models import Job
from workers.training.quantize import (
    MAX_PROMPT_CHARS,
    ComparisonStopped,
    check_settings,
    compare_quantizations,
    library_versions,
)

DEFAULT_PROMPT = "The capital of France is"
# Tokens generated (greedily) to time each variant: enough to average out the first step's
# costs, few enough that the three variants take well under a minute on two CPU cores.
DEFAULT_NEW_TOKENS = 16
TOP_K = 8

__all__ = ["DEFAULT_PROMPT", "MAX_PROMPT_CHARS", "QuantizationJobRunner", "request_comparison"]


# --- Submitting, or reusing ----------------------------------------------------------------------


def model_identity() -> str:
    """What decides the numbers besides the prompt: the model (its path and, where this process
    can read the folder, a hash of its config and the size of its weights) and the versions of
    torch, transformers and bitsandbytes. Reads a few small files; imports nothing heavy.
    """
    folder = Path(settings.MODEL_PATH)
    parts = [str(folder)]
    try:
        parts.append(hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()[:16])
        parts.append(str(sum(path.stat().st_size for path in folder.glob("*.safetensors"))))
    except OSError:
        parts.append("unread")  # a web server without the model files: the path has to do
    parts += [f"{name} {version}" for name, version in library_versions().items()]
    return "; ".join(parts)


def comparison_params(prompt: str, new_tokens: int | None = None, top_k: int | None = None) -> dict[str, Any]:
    """The job's params, with their cache key (new_tokens and top_k default to the lab's).
    Raises ValueError with a message for the learner.
    """
    new_tokens, top_k = new_tokens or DEFAULT_NEW_TOKENS, top_k or TOP_K
    prompt = check_settings(prompt, new_tokens, top_k)
    params = {"prompt": prompt, "new_tokens": new_tokens, "top_k": top_k, "model": model_identity()}
    canonical = json.dumps(params, sort_keys=True, ensure_ascii=False)
    return {**params, "cache_key": hashlib.sha256(canonical.encode()).hexdigest()}


def cached_comparison(cache_key: str) -> Job | None:
    """The newest succeeded comparison with this key, whoever asked for it."""
    return (
        Job.objects.filter(kind=Job.Kind.QUANTIZATION, status=Job.Status.SUCCEEDED, params__cache_key=cache_key)
        .order_by("-finished_at", "-pk")
        .first()
    )


def request_comparison(owner: Any, prompt: str, new_tokens: int | None = None) -> tuple[Job, bool]:
    """The learner's comparison of `prompt`, and whether it was already computed (see the module's
    docstring). Raises ValueError for a bad prompt, QuotaExceeded when a new job would be one too many.
    """
    params = comparison_params(prompt, new_tokens)
    key = params["cache_key"]
    own = (
        Job.objects.for_owner(owner)
        .filter(kind=Job.Kind.QUANTIZATION, params__cache_key=key, status__in=[Job.Status.SUCCEEDED, *Job.ACTIVE])
        .first()
    )
    if own is not None:
        return own, own.status == Job.Status.SUCCEEDED
    source = cached_comparison(key)
    if source is not None:
        return _copy_for(owner, source), True
    return submit_job(owner, Job.Kind.QUANTIZATION, params), False


def _copy_for(owner: Any, source: Job) -> Job:
    """A succeeded job of `owner`'s holding `source`'s results: born finished, never queued."""
    reused = source.metrics.get("reused") or {"computed_at": source.finished_at.isoformat()}
    return Job.objects.create(
        owner=owner,
        kind=Job.Kind.QUANTIZATION,
        queue=source.queue,
        params=source.params,
        status=Job.Status.SUCCEEDED,
        stage="Done",
        progress=1.0,
        metrics={**source.metrics, "reused": reused},
        created_at=timezone.now(),
        # Its duration is the one the comparison took when it was computed.
        started_at=source.started_at,
        finished_at=source.finished_at,
    )


def example_for(prompt: str = DEFAULT_PROMPT) -> Job | None:
    """The newest succeeded comparison of `prompt` (a lesson's, or the default) by anyone, to show
    anyone: the numbers only, never its job.
    """
    try:
        key = comparison_params(prompt)["cache_key"]
    except ValueError:
        return None
    return cached_comparison(key)


# --- Running ----------------------------------------------------------------------------------------


class QuantizationJobRunner(JobRunner):
    kind = Job.Kind.QUANTIZATION

    def run(self) -> dict[str, Any]:
        params = self.job.params
        try:
            prompt = check_settings(params["prompt"], int(params["new_tokens"]), int(params["top_k"]))
        except ValueError as exc:
            raise JobError(str(exc)) from None
        except (KeyError, TypeError):
            raise JobError("This job's settings are incomplete. Submit it again from the quantization lab.") from None
        model_path = Path(settings.MODEL_PATH)
        if not (model_path / "config.json").is_file():
            raise JobError(
                "The course model is not prepared on the worker that took this job "
                "(run `python manage.py prepare_model` there), so there is nothing to quantize."
            )
        try:
            with keep_alive(self.job):
                result = compare_quantizations(
                    model_path,
                    prompt,
                    int(params["new_tokens"]),
                    int(params["top_k"]),
                    report=self.report,
                    should_stop=self.should_stop,
                    # The worker child is alone on its cores; torch's threads stall each other
                    # whenever another process takes one (see README, "The shared model").
                    threads=model_threads(settings.MODEL_THREADS),
                )
        except ComparisonStopped:
            raise JobCancelled from None
        metrics = result.as_dict()
        metrics["model"] = params.get("model", "")
        return metrics


@contextmanager
def keep_alive(job: Job) -> Iterator[None]:
    """Writes the running job's heartbeat every JOB_HEARTBEAT_SECONDS from a thread, meanwhile.

    Importing torch and loading a model are single calls of several seconds each that cannot
    report progress, and on a busy machine they can outlast a short JOB_HEARTBEAT_TIMEOUT. The
    thread only says the process is alive: a killed worker stops it too, so the reaper still
    catches what it is for; a hung one is stopped by the task's time limits.
    """
    done = threading.Event()

    def beat() -> None:
        try:
            while not done.wait(settings.JOB_HEARTBEAT_SECONDS):
                Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(heartbeat_at=timezone.now())
        except Exception:  # a database hiccup: the main thread's reports still beat
            pass
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=beat, name=f"heartbeat-{job.code}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


# --- For the pages ---------------------------------------------------------------------------------


def result_context(job: Job) -> dict[str, Any]:
    """A succeeded comparison as the pages show it: the table's rows and the candidates' columns."""
    metrics = job.metrics
    variants = metrics.get("variants", [])
    baseline = next((v for v in variants if v.get("name") == "fp32" and not v.get("error")), None)
    fp32_ids = {c["token_id"] for c in baseline["candidates"]} if baseline else set()
    rows = []
    for variant in variants:
        footprint = variant.get("footprint_bytes") or 0
        row = {
            **variant,
            "footprint_mb": footprint / 1e6,
            "kept_fp32_mb": (variant.get("kept_fp32_bytes") or 0) / 1e6,
            "share_of_fp32": footprint / baseline["footprint_bytes"] if baseline and footprint else None,
            "top1": variant["candidates"][0] if variant.get("candidates") else None,
            "candidates": [
                {**candidate, "new": bool(fp32_ids) and candidate["token_id"] not in fp32_ids}
                for candidate in variant.get("candidates", [])
            ],
        }
        rows.append(row)
    return {
        "prompt": metrics.get("prompt", job.params.get("prompt", "")),
        "prompt_tokens": metrics.get("prompt_tokens"),
        "new_tokens": metrics.get("new_tokens"),
        "rows": rows,
        "versions": metrics.get("versions", {}),
        "computed_at": _when(metrics.get("reused")),
        "seconds": metrics.get("seconds"),
    }


def _when(reused: Any) -> datetime | None:
    """When a reused comparison was computed (a copy's metrics keep it as ISO text)."""
    try:
        return datetime.fromisoformat(reused["computed_at"])
    except (TypeError, KeyError, ValueError):
        return None
