"""Every bad input gets a clear error, and nothing already stored is lost."""

from __future__ import annotations

import hashlib
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.test import Client

from tests.jobs.conftest import TINY_TEXT
from workers.jobs import files
from workers.jobs.tokenizer import TOKENIZER_FILE
from workers.models import Artifact, Job

HTMX = {"HTTP_HX_REQUEST": "true"}


def form(**changes) -> dict:
    return {"corpus": "upload", "vocab_size": 300, "min_frequency": 2, "special_tokens": "<|endoftext|>", **changes}


def upload(content: bytes, name: str = "corpus.txt") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="text/plain")


def raw_multipart(client: Client, fields: dict, filename: str, content: bytes):
    """Posts the form with a file named exactly `filename` (the test client would strip a path)."""
    boundary = "----boundary7MA4YWxkTrZu0gW"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: text/plain\r\n\r\n".encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return client.generic(
        "POST", "/jobs/tokenizer/", b"".join(parts), content_type=f"multipart/form-data; boundary={boundary}"
    )


class Recorder(FileUploadHandler):
    """Counts the bytes of an upload that reach the handlers after the size check (which store it)."""

    received = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        Recorder.received += len(raw_data)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


@pytest.fixture
def recorder(settings) -> type[Recorder]:
    settings.FILE_UPLOAD_HANDLERS = ["tests.jobs.test_bad_input.Recorder", *settings.FILE_UPLOAD_HANDLERS]
    Recorder.received = 0
    return Recorder


@pytest.fixture
def active_job(make_job) -> Job:
    return make_job()


@pytest.fixture
def stored(finished_job, job_dirs):
    """What is stored already; every test that uses it checks it is untouched afterwards."""
    path = files.artifact_path(finished_job.code, TOKENIZER_FILE)
    rows = (list(Job.objects.values_list("pk", "status")), list(Artifact.objects.values_list("pk", "size")))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    on_disk = sorted(p.relative_to(job_dirs) for p in job_dirs.rglob("*"))
    yield
    assert (list(Job.objects.values_list("pk", "status")), list(Artifact.objects.values_list("pk", "size"))) == rows
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert sorted(p.relative_to(job_dirs) for p in job_dirs.rglob("*")) == on_disk


def refused(client: Client, data: dict, **extra) -> str:
    response = client.post("/jobs/tokenizer/", data, **extra)
    assert response.status_code == 400, response.content.decode()[-2000:]
    return response.content.decode()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "This file is empty."),
        (b"  \n\t\n   ", "This file is empty (or only blank space)."),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01", "This looks like a binary file (it contains zero bytes)"),
        (bytes(range(1, 32)) * 20, "This looks like a binary file (it is full of control characters)"),
        ("café crème".encode("latin-1"), "This file is not valid UTF-8 text (the first bad byte is number 4)"),
        ("naïve".encode()[:3], "it ends in the middle of a character"),
    ],
    ids=["empty", "blank", "binary", "control-characters", "latin-1", "cut-character"],
)
def test_a_file_that_is_not_text_is_refused(content, message, owner_client, stored):
    assert message in refused(owner_client, form(file=upload(content)))


def test_a_file_over_the_limit_is_refused_before_it_is_stored(owner_client, settings, recorder, stored):
    settings.JOB_UPLOAD_MAX_BYTES = 100_000
    html = refused(owner_client, form(file=upload(b"to be or not to be " * 6000)))  # 114 KB
    assert "This file is larger than the limit of 97.7\xa0KB. Upload a smaller one." in html
    # The handlers that store an upload got the chunks up to the limit; the one crossing it stopped it all.
    assert 0 < recorder.received <= 100_000


def test_a_file_just_under_the_limit_is_accepted_whole(owner_client, settings, recorder):
    settings.JOB_UPLOAD_MAX_BYTES = 100_000
    assert owner_client.post("/jobs/tokenizer/", form(file=upload(b"a" * 99_999))).status_code == 302
    assert recorder.received == 99_999


def test_a_request_far_over_the_limit_is_refused_without_reading_it(owner_client, settings, recorder, stored):
    settings.JOB_UPLOAD_MAX_BYTES = 4096
    html = refused(owner_client, form(file=upload(b"x" * 200_000)))
    assert "This file is larger than the limit of 4.0\xa0KB." in html
    assert recorder.received == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"vocab_size": 255}, "The vocabulary size must be between 256 and 32,000."),
        ({"vocab_size": 32001}, "The vocabulary size must be between 256 and 32,000."),
        ({"vocab_size": "lots"}, "Enter the vocabulary size as a whole number, like 2000."),
        ({"vocab_size": 256}, "With 1 special token(s) the vocabulary needs at least 257 entries"),
        ({"min_frequency": 0}, "The minimum frequency must be between 1 and 1,000."),
        ({"special_tokens": " ".join(f"<t{i}>" for i in range(9))}, "Use at most 8 special tokens."),
        ({"special_tokens": "<a> <a>"}, "Each special token may appear only once."),
        ({"special_tokens": "<" + "x" * 40 + ">"}, "Special tokens are 1 to 32 characters without spaces"),
        ({"corpus": "wikipedia"}, "Unknown corpus “wikipedia”: choose Shakespeare, the Bible, the course or a file"),
        ({"corpus": "../../etc/passwd"}, "Unknown corpus “../../etc/passwd”"),
        ({"corpus": "upload"}, "Choose a text file to upload, or pick one of the corpora above."),
    ],
    ids=lambda value: str(value)[:30],
)
def test_bad_settings_are_refused_with_a_clear_message(changes, message, owner_client, stored):
    html = refused(owner_client, {**form(corpus="shakespeare"), **changes})
    assert message.replace("'", "&#x27;") in html


def test_a_file_sent_with_a_built_in_corpus_is_refused_rather_than_ignored(owner_client, stored):
    html = refused(owner_client, form(corpus="bible", file=upload(TINY_TEXT.encode())))
    assert "You chose a file: pick “A text file of your own” to train on it." in html


@pytest.mark.parametrize("name", ["../../../../tmp/evil.txt", "..\\..\\evil.txt", "/etc/evil.txt"])
def test_a_path_traversal_file_name_stores_nothing_outside_the_jobs_folder(name, owner_client, owner, job_dirs):
    response = raw_multipart(owner_client, form(), name, TINY_TEXT.encode())
    assert response.status_code == 302, response.content.decode()[-1500:]
    job = Job.objects.get(owner=owner)
    assert job.params["upload_name"] == "evil.txt"  # shown to its owner, never part of a path
    assert files.upload_path(job.code).read_text() == TINY_TEXT
    assert not any(path.name == "evil.txt" for path in job_dirs.parent.rglob("*"))
    for path in job_dirs.rglob("*"):
        if path.is_file():
            relative = path.relative_to(job_dirs).as_posix()
            assert re.fullmatch(r"artifacts/[0-9a-f-]{36}/tokenizer\.json|uploads/[0-9a-f-]{36}/corpus\.txt", relative)


@pytest.mark.parametrize("name", ["..", ".", "../..", ""])
def test_a_file_name_that_is_only_dots_is_no_file_at_all(name, owner_client, stored):
    response = raw_multipart(owner_client, form(), name, TINY_TEXT.encode())
    assert response.status_code == 400
    assert "Choose a text file to upload" in response.content.decode()


def test_a_job_over_the_quota_is_refused_and_says_what_to_do(owner_client, active_job, settings, stored):
    settings.JOB_MAX_ACTIVE_PER_USER = 1
    html = refused(owner_client, form(corpus="course"), **HTMX)
    assert "You already have 1 job queued or running, the most you may have at once (1)." in html
    assert "cancel one on the My jobs page" in html


def test_finished_jobs_do_not_count_against_the_quota(owner_client, finished_job, settings):
    settings.JOB_MAX_ACTIVE_PER_USER = 1
    assert owner_client.post("/jobs/tokenizer/", form(corpus="course")).status_code == 302


def test_another_learners_jobs_do_not_count_against_mine(classmate_client, active_job, settings):
    settings.JOB_MAX_ACTIVE_PER_USER = 1
    assert classmate_client.post("/jobs/tokenizer/", form(corpus="course")).status_code == 302


def test_cancelling_someone_elses_job_is_404_and_changes_nothing(classmate_client, finished_job, stored):
    assert classmate_client.post(f"/jobs/{finished_job.code}/cancel/").status_code == 404


def test_downloading_someone_elses_artifact_is_404(classmate_client, finished_job, stored):
    response = classmate_client.get(f"/jobs/{finished_job.code}/files/tokenizer.json")
    assert response.status_code == 404 and not getattr(response, "streaming", False)


def test_a_form_without_the_csrf_token_is_refused(owner, stored):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert client.post("/jobs/tokenizer/", form(file=upload(TINY_TEXT.encode()))).status_code == 403
