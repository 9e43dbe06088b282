"""My jobs: every job with its status, parameters, duration, result and downloads; delete a finished one."""

from __future__ import annotations

import re

from workers.jobs import files
from workers.models import Job

HTMX = {"HTTP_HX_REQUEST": "true"}


def test_my_jobs_lists_every_job_with_its_status_parameters_duration_and_downloads(
    finished_job, make_job, classmate, owner_client
):
    queued = make_job(corpus="bible", vocab_size=8000)
    make_job(classmate, corpus="shakespeare")  # not mine
    html = owner_client.get("/jobs/").content.decode()
    rows = re.findall(r'<tr id="job-row-([0-9a-f-]+)" data-testid="job-row" data-status="(\w+)">', html)
    assert rows == [(str(queued.code), "queued"), (str(finished_job.code), "succeeded")]  # newest first
    assert "The King James Bible, vocabulary 8,000, min. frequency 2" in html
    assert "This course&#x27;s lessons, vocabulary 400" in html
    assert (
        f"{finished_job.metrics['vocab_size']} tokens, {finished_job.metrics['chars_per_token']:.2f} characters per token"
        in html
    )
    assert f'href="/jobs/{finished_job.code}/files/tokenizer.json"' in html
    assert re.search(r"<td>\d+\.\d\xa0s</td>", html)  # how long the finished one took
    assert html.count('data-testid="delete-job"') == 1  # only the finished job can be deleted


def test_my_jobs_is_for_signed_in_learners(client):
    assert client.get("/jobs/")["Location"].startswith("/accounts/login/")


def test_deleting_a_finished_job_removes_it_and_its_files(
    finished_job, owner_client, django_capture_on_commit_callbacks
):
    folder = files.artifact_dir(finished_job.code)
    assert folder.is_dir()
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(f"/jobs/{finished_job.code}/delete/", **HTMX)
    assert response.status_code == 200 and response.content == b""  # the row's outerHTML: gone
    assert not Job.objects.filter(pk=finished_job.pk).exists()
    assert not folder.exists()


def test_deleting_without_htmx_goes_back_to_my_jobs_with_a_message(finished_job, owner_client):
    response = owner_client.post(f"/jobs/{finished_job.code}/delete/", follow=True)
    assert "Deleted the job and its files." in response.content.decode()


def test_a_queued_job_must_be_cancelled_before_it_is_deleted(make_job, owner_client):
    job = make_job()
    response = owner_client.post(f"/jobs/{job.code}/delete/", **HTMX)
    assert response.status_code == 400
    assert "cancel it first, then delete it" in response.content.decode()
    assert Job.objects.filter(pk=job.pk).exists()


def test_cancelling_from_my_jobs_updates_the_row_in_place(make_job, owner_client):
    job = make_job()
    html = owner_client.post(f"/jobs/{job.code}/cancel/", {"from": "list"}, **HTMX).content.decode()
    assert html.lstrip().startswith(f'<tr id="job-row-{job.code}" data-testid="job-row" data-status="cancelled">')
    assert "Cancelled: the job was removed from the queue." in html
    assert 'data-testid="delete-job"' in html  # now it can go


def test_a_learner_deleted_with_their_jobs_leaves_no_files(finished_job, owner, django_capture_on_commit_callbacks):
    folder = files.artifact_dir(finished_job.code)
    with django_capture_on_commit_callbacks(execute=True):
        owner.delete()  # the jobs go by cascade, never through My jobs
    assert not folder.exists()
