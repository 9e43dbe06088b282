"""Jobs on a real Celery worker and a real Redis: run, fail, run once only, survive a killed worker."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.jobs.conftest import TINY_TEXT, tokenizer_params, wait_for
from tests.jobs.worker import Worker
from workers.jobs import files, submit_job
from workers.jobs.tokenizer import TOKENIZER_FILE
from workers.models import Job
from workers.tasks import train_tokenizer

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_job_goes_from_queued_to_running_to_succeeded(owner_client, owner, worker):
    upload = SimpleUploadedFile("cats.txt", TINY_TEXT.encode())
    response = owner_client.post(
        "/jobs/tokenizer/",
        {"corpus": "upload", "vocab_size": 300, "min_frequency": 2, "special_tokens": "<|endoftext|>", "file": upload},
    )
    job = Job.objects.get(owner=owner)
    assert response.status_code == 302 and response["Location"] == job.get_absolute_url()
    assert job.queue == "cpu"  # its status may be past "queued" already: the idle worker is quick

    job = wait_for(job, "succeeded")
    # Queued when created, running once claimed, succeeded when done (test_job_websocket.py
    # watches the same states go by, frame by frame).
    assert job.created_at <= job.started_at <= job.heartbeat_at <= job.finished_at
    assert job.stage == "Done" and job.progress == 1.0
    assert job.worker.startswith("tests-")
    # A tiny text runs out of pairs seen twice before 300: 256 bytes + 1 special + the merges.
    assert job.metrics["merge_count"] == job.metrics["vocab_size"] - 257 > 20
    assert job.metrics["merges"][0] == ["a", "t"]  # cat, sat, mat, rat, hat, that: the commonest pair
    artifact = job.artifacts.get()
    path = files.artifact_path(job.code, TOKENIZER_FILE)
    assert artifact.name == TOKENIZER_FILE and artifact.size == path.stat().st_size
    # Only the finished file: no temporary name left behind, and the upload is gone.
    assert [p.name for p in path.parent.iterdir()] == [TOKENIZER_FILE]
    assert not files.upload_path(job.code).exists()


def test_the_downloaded_tokenizer_loads_as_is_in_tokenizers_and_transformers(owner_client, make_job, worker, tmp_path):
    job = wait_for(make_job(vocab_size=500), "succeeded")
    response = owner_client.get(f"/jobs/{job.code}/files/tokenizer.json")
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="tokenizer.json"'
    downloaded = tmp_path / "tokenizer.json"
    downloaded.write_bytes(b"".join(response.streaming_content))

    # In a process of its own: transformers must never be imported by the web process (or this one).
    script = (
        "import sys; from tokenizers import Tokenizer; from transformers import PreTrainedTokenizerFast\n"
        "plain = Tokenizer.from_file(sys.argv[1]); fast = PreTrainedTokenizerFast(tokenizer_file=sys.argv[1])\n"
        "text = 'Wherefore art thou training a tokenizer?'\n"
        "assert plain.encode(text).ids == fast(text)['input_ids'], (plain.encode(text).ids, fast(text)['input_ids'])\n"
        "assert fast.decode(fast(text)['input_ids']) == text\n"
        "print(plain.get_vocab_size(), len(fast))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(downloaded)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["500", "500"]


def test_a_job_with_a_bad_corpus_fails_with_a_message_the_learner_can_act_on(make_job, worker):
    job = wait_for(make_job(corpus="wikipedia"), "failed")
    assert job.message.startswith("Unknown corpus 'wikipedia'")
    assert not job.artifacts.exists()
    assert not files.artifact_dir(job.code).exists()


def test_a_job_whose_upload_is_gone_fails_and_says_what_to_do(owner, worker):
    job = submit_job(owner, Job.Kind.TOKENIZER, tokenizer_params(corpus="upload", upload_name="notes.txt"))
    job = wait_for(job, "failed")
    assert job.message == "The uploaded file is gone from the server. Upload it again."


def test_a_redelivered_message_runs_nothing_twice(make_job, worker):
    job = wait_for(make_job(), "succeeded")
    path = files.artifact_path(job.code, TOKENIZER_FILE)
    before = (job.started_at, job.finished_at, job.metrics, path.stat().st_mtime_ns)

    # The same message again, twice, as a broker redelivers it; then a job behind them, so that
    # once it is done the worker (one process, one message at a time) has handled both.
    train_tokenizer.delay(job.pk)
    train_tokenizer.delay(job.pk)
    wait_for(make_job(), "succeeded")

    job.refresh_from_db()
    assert (job.started_at, job.finished_at, job.metrics, path.stat().st_mtime_ns) == before
    assert job.artifacts.count() == 1
    assert worker.output().count(f"job {job.code} is succeeded already; nothing to do") == 2


def test_a_double_submission_of_one_queued_job_runs_it_once(make_job, worker):
    job = make_job()
    train_tokenizer.delay(job.pk)  # a second message for the same job, before it starts
    wait_for(job, "succeeded")
    wait_for(make_job(), "succeeded")  # behind both messages
    assert worker.output().count(f"job {job.code} started on") == 1
    skipped = re.findall(rf"job {job.code} is (running|succeeded) already; nothing to do", worker.output())
    assert len(skipped) == 1


def test_the_reaper_fails_the_job_of_a_worker_killed_mid_job(make_job, worker):
    job = wait_for(make_job(corpus="shakespeare", vocab_size=32000), "running")
    pid = int(job.worker.rsplit(" ", 1)[1])
    os.kill(pid, signal.SIGKILL)  # the process running the job: no chance to say anything

    # The message comes back (acks_late) and finds the job claimed: it runs nothing. The job
    # stays "running" until the reaper sees no heartbeat for JOB_HEARTBEAT_TIMEOUT (5 s here).
    job = wait_for(job, "failed", timeout=30)
    assert "The worker running this job stopped" in job.message
    assert not files.artifact_dir(job.code).exists()
    # The worker replaced its lost process and goes on working.
    assert wait_for(make_job(), "succeeded").artifacts.count() == 1


def test_a_job_past_its_soft_time_limit_fails_with_a_message_and_keeps_nothing(owner, worker):
    params = tokenizer_params(corpus="shakespeare", vocab_size=32000)
    job = Job.objects.create(owner=owner, kind=Job.Kind.TOKENIZER, queue="cpu", params=params)
    # Its only message carries a soft limit of its own, far shorter than this job takes.
    train_tokenizer.apply_async(args=[job.pk], soft_time_limit=0.5)
    job = wait_for(job, "failed")
    assert job.message == (
        "The job ran longer than its time limit (0.5 seconds) and was stopped; nothing was kept. "
        "Try a smaller corpus or a smaller vocabulary."
    )
    assert not files.artifact_dir(job.code).exists()


def test_a_worker_that_starts_sends_again_the_jobs_whose_messages_were_lost(owner, worker, tmp_path):
    # A queued job with no message in Redis: what a restarted private Redis leaves behind.
    job = Job.objects.create(owner=owner, kind=Job.Kind.TOKENIZER, queue="cpu", params=tokenizer_params())
    second = Worker(worker.env, tmp_path / "second.log", name="second")
    try:
        job = wait_for(job, "succeeded")
    finally:
        second.stop()
    assert f"job {job.code} started on" in worker.output() + second.output()
