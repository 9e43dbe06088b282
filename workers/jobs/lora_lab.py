"""The LoRA lab's pages: its form, with or without a submission, and the preview of a job.

No torch here: the preview tokenizes with the model folder's tokenizer.json and renders chat
templates with jinja2, through the same workers.training.lora code the worker trains with.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import HttpRequest

from workers.forms import LimitedUploadHandler, LoraJobForm, initial_dataset
from workers.training.lora import (
    BUILTIN_DATASETS,
    Codec,
    DatasetError,
    DatasetSource,
    build_dataset,
    preview_rows,
    total_steps,
)

PREVIEW_EXAMPLES = 3


class LabRefused(Exception):
    """The submitted form is not valid; it carries the form, with its errors, to show again."""

    def __init__(self, form: LoraJobForm) -> None:
        super().__init__("invalid form")
        self.form = form


def blank_lora_form(initial: str | dict[str, Any] | None) -> LoraJobForm:
    """A fresh form: preselecting a dataset (a lesson's option) or a job's settings to vary."""
    if isinstance(initial, dict):
        values = {name: value for name, value in initial.items() if name in LoraJobForm.base_fields}
        if values.get("dataset") == "upload":
            values["dataset"] = "shakespeare"  # the file is not kept: choose it again to reuse it
    else:
        values = {"dataset": initial_dataset(initial)}
    return LoraJobForm(upload_limit=settings.JOB_UPLOAD_MAX_BYTES, initial=values)


def submitted_lora_form(request: HttpRequest, handler: LimitedUploadHandler, too_large: bool) -> LoraJobForm:
    """The posted form, valid; or LabRefused. `too_large`: the request is far over the limit and
    its body is not read at all."""
    limit = settings.JOB_UPLOAD_MAX_BYTES
    if too_large:
        defaults = {name: field.initial for name, field in LoraJobForm.base_fields.items() if field.initial is not None}
        form = LoraJobForm({**defaults, "dataset": "upload"}, upload_limit=limit, upload_too_large=True)
    else:
        form = LoraJobForm(request.POST, request.FILES, upload_limit=limit, upload_too_large=handler.too_large)
    if not form.is_valid():
        raise LabRefused(form)
    return form


@lru_cache(maxsize=2)
def _codec(model_path: str) -> Codec:
    return Codec(Path(model_path))


def lora_preview_context(form: LoraJobForm) -> dict[str, Any]:
    """The job's resolved settings and its first training examples, split by what carries loss."""
    hp = form.hyper_parameters()
    params = form.params()
    upload = form.cleaned_data.get("file")
    try:
        codec = _codec(str(settings.MODEL_PATH))
    except Exception:  # the model folder is not prepared on this server
        form.add_error(None, "The preview needs the course model's tokenizer, which is not prepared on this server.")
        raise LabRefused(form) from None
    with tempfile.TemporaryDirectory() as folder:
        if upload is not None:
            path = Path(folder) / "upload"
            with path.open("wb") as file:
                for chunk in upload.chunks():
                    file.write(chunk)
            source = DatasetSource("upload", path, f"“{params['upload_name']}”", params["format"])
        else:
            source = DatasetSource(params["dataset"])
        try:
            dataset = build_dataset(source, codec, hp.seq_len, hp.seed)
        except DatasetError as exc:
            form.add_error("file" if upload is not None else None, str(exc))
            raise LabRefused(form) from None
    steps = total_steps(len(dataset.train), hp)
    return {
        "preview_form": form,
        "params": params,
        "hp": hp,
        "dataset": dataset.summary(),
        "dataset_label": BUILTIN_DATASETS.get(params["dataset"], source.label),
        "steps": steps,
        "epochs": steps * hp.batch_size / max(len(dataset.train), 1),
        "rows": preview_rows(dataset, codec, PREVIEW_EXAMPLES),
    }
