"""LoRA jobs on a real Celery worker with the real model: train, download, load; cancel; resume.

Tiny settings (rank 4, batch 2 x 32 tokens, a few steps) keep each job to seconds on two cores.
"""

from __future__ import annotations

import io
import os
import signal
import time
import zipfile

import pytest

from tests.jobs.conftest import wait_for
from workers.jobs import files
from workers.models import Job
from workers.training.lora import checkpoint_step

pytestmark = pytest.mark.django_db(transaction=True)

HTMX = {"HTTP_HX_REQUEST": "true"}


def tiny(**changes) -> dict:
    values = {"dataset": "shakespeare", "rank": 4, "alpha": 8, "dropout": 0.0, "target": "attention",
              "learning_rate": 0.003, "epochs": 1, "max_steps": 3, "seq_len": 32, "batch_size": 2, "seed": 0,
              "checkpoint_every": 2}  # fmt: skip
    return {**values, **changes}


def submit(client, owner, **changes) -> Job:
    response = client.post("/jobs/lora/", tiny(**changes))
    assert response.status_code == 302, response.content.decode()[-2000:]
    return Job.objects.filter(owner=owner).latest("pk")


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_job_trains_and_its_adapter_loads_and_changes_the_model(owner_client, owner, classmate_client, worker):
    import torch
    from django.conf import settings
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    job = wait_for(submit(owner_client, owner), "succeeded", "failed", timeout=150)
    assert job.status == "succeeded", job.message
    metrics = job.metrics
    assert metrics["steps"] == 3 and [step for step, _ in metrics["history"]["train"]] == [1, 2, 3]
    assert metrics["history"]["val"] and metrics["final_val_loss"] > 0
    assert metrics["trainable_parameters"] < metrics["total_parameters"] / 100
    assert metrics["memory"]["kind"] == "cpu_rss" and metrics["memory"]["peak_mb"] > 500
    assert any("Done" in text for _, text in metrics["events"])
    names = set(job.artifacts.values_list("name", flat=True))
    assert "adapter.zip" in names and names <= {"adapter.zip", "adapter-best.zip"}
    # The checkpoints and scratch go just after the row says "succeeded".
    wait_until(lambda: not files.upload_path(job.code).parent.exists(), 10, "the work folder to go")

    page = owner_client.get(job.get_absolute_url()).content.decode()
    assert 'data-testid="loss-curve"' in page and 'class="curve-train"' in page and 'class="curve-val"' in page
    assert 'data-testid="final-val-loss"' in page and "Download adapter.zip" in page and "## Settings" in page

    response = owner_client.get(f"/jobs/{job.code}/files/adapter.zip")
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    assert sorted(archive.namelist()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    folder = files.artifact_dir(job.code) / "unzipped"
    archive.extractall(folder)
    base = AutoModelForCausalLM.from_pretrained(settings.MODEL_PATH).eval()
    ids = torch.tensor([[504, 2354, 3290, 335, 260]])
    with torch.no_grad():
        before = base(ids).logits
        adapted = PeftModel.from_pretrained(base, folder).eval()
        after = adapted(ids).logits
    assert (after - before).abs().max() > 1e-3
    del base, adapted  # half a gigabyte the next tests' worker would rather have

    # To anyone else the job and its files do not exist.
    assert classmate_client.get(job.get_absolute_url()).status_code == 404
    assert classmate_client.get(f"/jobs/{job.code}/files/adapter.zip").status_code == 404
    assert classmate_client.get(job.get_absolute_url(), **HTMX).status_code == 404


def test_a_running_job_is_cancelled_between_steps_and_keeps_nothing(owner_client, owner, worker):
    job = submit(owner_client, owner, max_steps=400, checkpoint_every=1)
    wait_until(lambda: checkpoint_step(files.work_dir(job.code)) is not None, 90, "a first checkpoint")
    html = owner_client.post(f"/jobs/{job.code}/cancel/", **HTMX).content.decode()
    assert "Stopping at the next step…" in html
    job = wait_for(job, "cancelled", timeout=30)
    assert job.message == "Cancelled while it ran; nothing was kept."
    assert not job.artifacts.exists() and not files.artifact_dir(job.code).exists()
    wait_until(lambda: not files.upload_path(job.code).parent.exists(), 10, "the checkpoints to go")


def test_a_job_whose_worker_is_killed_resumes_from_its_checkpoint(owner_client, owner, worker):
    job = submit(owner_client, owner, max_steps=6, checkpoint_every=2)
    wait_until(lambda: (checkpoint_step(files.work_dir(job.code)) or 0) >= 2, 90, "the checkpoint of step 2")
    job.refresh_from_db()
    pid = int(job.worker.rsplit(" pid ", 1)[1])
    os.kill(pid, signal.SIGKILL)  # the worker's child, mid-job: no chance to say anything
    killed_at = checkpoint_step(files.work_dir(job.code))

    # The reaper (beat, every second) sees no heartbeat for 5 s and queues the job again.
    wait_until(lambda: Job.objects.get(pk=job.pk).resumes == 1, 30, "the reaper to queue it again")
    job = wait_for(job, "succeeded", "failed", timeout=120)
    assert job.status == "succeeded", job.message
    assert job.resumes == 1 and job.metrics["resumes"] == 1 and job.metrics["steps"] == 6
    events = [text for _, text in job.metrics["events"]]
    assert any("queued again to resume from its checkpoint" in text for text in events)
    assert f"Resumed from the checkpoint at step {killed_at} of 6." in events
    # The curve holds every step: those before the kill from the checkpoint, the rest after.
    assert [step for step, _ in job.metrics["history"]["train"]] == [1, 2, 3, 4, 5, 6][
        : len(job.metrics["history"]["train"])
    ]
    assert job.metrics["history"]["train"][-1][0] == 6 > killed_at
    assert job.artifacts.filter(name="adapter.zip").exists()
