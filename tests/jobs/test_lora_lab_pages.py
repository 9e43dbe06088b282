"""The LoRA lab's pages: the form and its bounds, the preview, and every bad submission.

In the test's transaction: nothing is sent to a worker (jobs are enqueued on commit).
"""

from __future__ import annotations

import json
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from workers.jobs import files
from workers.models import Job

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}
QA = "".join(json.dumps({"prompt": f"Q{i}: two plus two?", "completion": " Four."}) + "\n" for i in range(6))


def form(**changes) -> dict:
    values = {"dataset": "shakespeare", "rank": 4, "alpha": 8, "dropout": 0.0, "target": "attention",
              "learning_rate": 0.001, "epochs": 1, "max_steps": 3, "seq_len": 32, "batch_size": 2, "seed": 0,
              "checkpoint_every": 2}  # fmt: skip
    return {**values, **changes}


def upload(content: str | bytes, name: str = "qa.jsonl") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content.encode() if isinstance(content, str) else content)


def refused(client, data: dict, url: str = "/jobs/lora/") -> str:
    response = client.post(url, data, **HTMX)
    assert response.status_code == 400, response.content.decode()[-2000:]
    return response.content.decode()


def test_the_lab_shows_the_bounds_and_explains_why_qlora_is_off(owner_client):
    html = owner_client.get("/jobs/lora/").content.decode()
    assert 'name="rank"' in html and 'min="1"' in html and 'max="64"' in html
    assert 'name="seq_len"' in html and 'max="1024"' in html
    assert re.search(r'<input type="checkbox" name="qlora"[^>]* disabled', html)
    assert "the training workers here have no CUDA GPU" in html
    assert "Questions and answers about this course" in html


def test_qlora_is_offered_when_the_gpu_workers_have_cuda(owner_client, settings):
    settings.LORA_QLORA_AVAILABLE = True
    html = owner_client.get("/jobs/lora/").content.decode()
    assert re.search(r'<input type="checkbox" name="qlora"[^>]*>', html)
    assert not re.search(r'<input type="checkbox" name="qlora"[^>]* disabled', html)


def test_the_lessons_embed_the_lab_with_their_dataset(course, owner_client):
    html = owner_client.get("/learn/fine-tuning-job/").content.decode()
    assert 'id="lora-lab"' in html and 'data-testid="lora-form"' in html
    # The lesson says `dataset: qa`: the course's questions are preselected.
    assert re.search(r'<input type="radio" name="dataset" value="course-qa"[^>]* checked>', html)


def test_the_preview_shows_the_settings_and_which_tokens_carry_loss(owner_client):
    response = owner_client.post("/jobs/lora/preview/", form(dataset="upload", file=upload(QA)), **HTMX)
    html = response.content.decode()
    assert response.status_code == 200, html[-1500:]
    assert 'data-testid="preview-steps">3 ' in html
    assert "prompt-completion" in html and "rank 4" in html
    assert '<span class="no-loss">Q' in html and '<span class="loss"> Four.&lt;|im_end|&gt;</span>' in html
    assert not Job.objects.exists()  # a preview submits nothing


def test_the_preview_of_a_chat_dataset_counts_what_the_sequence_length_cuts(owner_client):
    html = owner_client.post("/jobs/lora/preview/", form(dataset="course-qa", seq_len=48), **HTMX).content.decode()
    assert "(chat)" in html and 'data-testid="preview-truncated"' in html


def test_a_valid_submission_creates_the_job_and_opens_its_page(owner_client, owner):
    response = owner_client.post("/jobs/lora/", form(dataset="upload", file=upload(QA)))
    job = Job.objects.get(owner=owner)
    assert response.status_code == 302 and response["Location"] == job.get_absolute_url()
    assert job.kind == "lora" and job.queue == "gpu" and job.status == "queued"
    assert job.params["rank"] == 4 and job.params["format"] == "jsonl" and job.params["upload_name"] == "qa.jsonl"
    assert files.upload_path(job.code).read_text() == QA
    html = owner_client.get(job.get_absolute_url()).content.decode()
    assert "“qa.jsonl”" in html and "rank 4" in html and "Waiting in the queue" in html


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"file": upload(QA + "{oops\n")}, "Line 7 is not valid JSON"),
        ({"file": upload('{"prompt": "a"}\n')}, "Line 1 has no “completion”"),
        ({"file": upload('{"messages": [{"role": "user", "content": "hi"}]}\n')}, "there is no “assistant” message"),
        ({"file": upload(b"")}, "This file is empty."),
        ({"file": upload(b"GIF89a\x00\x01\x00")}, "This looks like a binary file"),
        ({"file": upload("naïve".encode("latin-1"), "notes.txt")}, "This file is not valid UTF-8 text"),
        ({}, "Choose a file to upload, or pick one of the datasets above."),
        ({"rank": 65}, "The rank must be between 1 and 64."),
        ({"dropout": 0.9}, "The dropout must be between 0 and 0.5."),
        ({"seq_len": 2048}, "The sequence length must be between 16 and 1024."),
        ({"batch_size": 0}, "The batch size must be between 1 and 32."),
        ({"target": "mlp"}, "Choose “attention” or “all-linear” layers to adapt."),
        ({"dataset": "wikipedia"}, "Unknown dataset “wikipedia”"),
        ({"qlora": "on"}, "the training workers here have no CUDA GPU"),
    ],
    ids=[
        "bad-line",
        "missing-field",
        "no-assistant",
        "empty",
        "binary",
        "latin-1",
        "no-file",
        "rank",
        "dropout",
        "seq-len",
        "batch",
        "target",
        "dataset",
        "qlora",
    ],  # fmt: skip
)
def test_bad_submissions_are_refused_with_a_clear_message(owner_client, changes, message):
    data = form(dataset="upload", **changes) if "dataset" not in changes else form(**changes)
    html = refused(owner_client, data)
    assert message in html.replace("&#x27;", "'"), html[-3000:]
    assert not Job.objects.exists()


def test_a_bad_line_is_named_in_the_preview_too(owner_client):
    html = refused(owner_client, form(dataset="upload", file=upload(QA + "[1, 2]\n")), "/jobs/lora/preview/")
    assert "Line 7 is not a JSON object" in html


def test_a_file_over_the_limit_is_refused(owner_client, settings):
    settings.JOB_UPLOAD_MAX_BYTES = 2048
    html = refused(owner_client, form(dataset="upload", file=upload(QA * 40)))
    assert "This file is larger than the limit of 2.0\xa0KB." in html


def test_a_job_over_the_quota_is_refused(owner_client, settings):
    settings.JOB_MAX_ACTIVE_PER_USER = 1
    assert owner_client.post("/jobs/lora/", form()).status_code == 302
    html = refused(owner_client, form())
    assert "You already have 1 job queued or running" in html


def test_the_lab_needs_a_login(client):
    response = client.get("/jobs/lora/")
    assert response.status_code == 302 and "/login" in response["Location"]
