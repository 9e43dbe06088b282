"""The tokenizer lab's job: train a byte-level BPE tokenizer; then show what it learned.

The training itself is workers.training.bpe (no Django); this module is the shell around it:
the job's params in, tokenizer.json and the metrics out, and the views' helpers that replay the
merges on a sentence and compare tokenizers side by side.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any
from uuid import UUID

from django.conf import settings
from tokenizers import Tokenizer

from workers.inference.tokenizer import course_tokenizer
from workers.jobs import files
from workers.jobs.runner import JobCancelled, JobError, JobRunner
from workers.models import Job
from workers.training.bpe import (
    BpeConfig,
    ShownToken,
    TrainingStopped,
    characters_for_display,
    encode_for_display,
    readable,
    tokenize_with_merges,
    train_bpe,
)
from workers.training.corpora import Corpus, CorpusError, builtin_corpus, upload_corpus

TOKENIZER_FILE = "tokenizer.json"
# The first merges are kept with the metrics, to list and to step through on the job's page.
KEPT_MERGES = 500
LISTED_MERGES = 40
DEFAULT_SAMPLE = "Wherefore art thou training a tokenizer on thy smartphone?"
MAX_SAMPLE_CHARS = 400


def config_from_params(params: dict[str, Any]) -> BpeConfig:
    """Raises ValueError (with a message for the learner), KeyError or TypeError."""
    return BpeConfig(
        vocab_size=int(params["vocab_size"]),
        min_frequency=int(params["min_frequency"]),
        special_tokens=tuple(str(token) for token in params.get("special_tokens", ())),
    )


def corpus_for(job: Job) -> Corpus:
    name = job.params.get("corpus")
    if name == "upload":
        return upload_corpus(files.upload_path(job.code), job.params.get("upload_name") or "your file")
    return builtin_corpus(str(name), settings.LESSONS_DIR)


class TokenizerJobRunner(JobRunner):
    kind = Job.Kind.TOKENIZER

    def run(self) -> dict[str, Any]:
        # The params were checked when the job was submitted; the worker checks them again
        # rather than trust a row that may come from an older version of the form.
        try:
            config = config_from_params(self.job.params)
            corpus = corpus_for(self.job)
        except ValueError as exc:
            raise JobError(str(exc)) from None
        except (KeyError, TypeError):
            raise JobError("This job's settings are incomplete. Submit it again from the tokenizer lab.") from None
        except CorpusError as exc:
            raise JobError(str(exc)) from None

        try:
            result = train_bpe(corpus, config, report=self.report, should_stop=self.should_stop)
        except TrainingStopped:
            raise JobCancelled from None
        except CorpusError as exc:
            raise JobError(str(exc)) from None

        self.check_cancel()
        self.report(f"Saving {TOKENIZER_FILE}", 0.95)
        self.write_artifact(TOKENIZER_FILE, lambda path: result.tokenizer.save(str(path)))
        return {
            "vocab_size": result.vocab_size,
            "chars_per_token": round(result.chars_per_token, 3),
            "sample_chars": result.sample_chars,
            "sample_tokens": result.sample_tokens,
            "sample_is_heldout": result.sample_is_heldout,
            "training_chars": result.training_chars,
            "merge_count": len(result.merges),
            "merges": [list(pair) for pair in result.merges[:KEPT_MERGES]],
            "special_tokens": list(config.special_tokens),
            "seconds": round(result.seconds, 2),
        }


# --- For the pages ---------------------------------------------------------------------------------


def trained_tokenizers_for(user: Any) -> list[tuple[str, UUID, Path]]:
    """The learner's trained tokenizers, newest first: (label, job code, path of tokenizer.json).

    For choosing among them in the lessons' tokenizer view; load one with
    tokenizers.Tokenizer.from_file(str(path)). Empty for anonymous users.
    """
    if not getattr(user, "is_authenticated", False):
        return []
    jobs = (
        Job.objects.for_owner(user)
        .filter(kind=Job.Kind.TOKENIZER, status=Job.Status.SUCCEEDED, artifacts__name=TOKENIZER_FILE)
        .order_by("-finished_at", "-pk")
    )
    found = []
    for job in jobs:
        path = files.artifact_path(job.code, TOKENIZER_FILE)
        if path.is_file():
            found.append((f"Your tokenizer: {job.summary} ({job.finished_at:%d %b %H:%M})", job.code, path))
    return found


def load_tokenizer(job: Job) -> Tokenizer | None:
    """The job's trained tokenizer, or None if it has none (yet)."""
    path = files.artifact_path(job.code, TOKENIZER_FILE)
    try:
        changed = path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    return _load(str(path), changed)


@lru_cache(maxsize=16)
def _load(path: str, changed: int) -> Tokenizer:
    return Tokenizer.from_file(path)


def sample_text(text: str | None) -> tuple[str, bool]:
    """The learner's sample sentence (or ours), cut to MAX_SAMPLE_CHARS; and whether it was cut."""
    text = (text or "").strip() or DEFAULT_SAMPLE
    return text[:MAX_SAMPLE_CHARS], len(text) > MAX_SAMPLE_CHARS


def merge_rows(job: Job) -> list[dict[str, Any]]:
    return [
        {"rank": rank, "left": readable(left), "right": readable(right), "merged": readable(left + right)}
        for rank, (left, right) in enumerate(job.metrics.get("merges", [])[:LISTED_MERGES], start=1)
    ]


def merge_step(job: Job, step: Any = 0, text: str | None = None) -> dict[str, Any]:
    """The sample sentence as the tokenizer splits it after its first `step` merges."""
    merges = [tuple(pair) for pair in job.metrics.get("merges", [])]
    try:
        step = min(max(int(step), 0), len(merges))
    except (TypeError, ValueError):
        step = 0
    text, cut = sample_text(text)
    newest = "".join(merges[step - 1]) if step else None
    tokens = tokenize_with_merges(text, merges[:step], job.metrics.get("special_tokens", []))
    return {
        "step": step,
        "total": len(merges),
        "merge": (
            {"left": readable(merges[step - 1][0]), "right": readable(merges[step - 1][1]), "merged": readable(newest)}
            if newest
            else None
        ),
        "tokens": [{"text": readable(token), "new": token == newest} for token in tokens],
        "count": len(tokens),
        "text": text,
        "cut": cut,
        "previous": step - 1 if step > 0 else None,
        "next": step + 1 if step < len(merges) else None,
        "rows": merge_rows(job),
    }


def comparison(job: Job, text: str | None = None) -> dict[str, Any]:
    """The same text through the learner's tokenizer, the course model's and a character-level one."""
    text, cut = sample_text(text)
    rows = []
    learner = load_tokenizer(job)
    if learner is not None:
        rows.append(
            _row("Your tokenizer", f"{learner.get_vocab_size():,} tokens", encode_for_display(learner, text), text)
        )
    try:
        course = course_tokenizer()
    except (FileNotFoundError, OSError):
        course = None  # the model is not prepared on this server: compare with what there is
    if course is not None:
        rows.append(
            _row(
                "The course model's tokenizer",
                f"{course.get_vocab_size():,} tokens",
                encode_for_display(course, text),
                text,
            )
        )
    rows.append(_row("Character by character", "one token per character", characters_for_display(text), text))
    return {"text": text, "cut": cut, "rows": rows}


def _row(label: str, detail: str, tokens: list[ShownToken], text: str) -> dict[str, Any]:
    return {
        "label": label,
        "detail": detail,
        "tokens": tokens,
        "count": len(tokens),
        "chars_per_token": len(text) / len(tokens) if tokens else 0.0,
    }
