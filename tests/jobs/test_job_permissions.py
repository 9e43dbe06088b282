"""Only a job's owner sees it: a classmate and a stranger get 404 (or a login page), never a file."""

from __future__ import annotations

import pytest

from workers.jobs import files
from workers.jobs.tokenizer import TOKENIZER_FILE
from workers.models import Job

JOB_PAGES = ["", "merges/?step=2", "compare/?text=hi", "files/tokenizer.json"]


@pytest.mark.parametrize("page", JOB_PAGES)
def test_the_owner_sees_every_page_of_their_job(page, finished_job, owner_client):
    assert owner_client.get(f"/jobs/{finished_job.code}/{page}").status_code == 200


@pytest.mark.parametrize("page", JOB_PAGES)
def test_a_classmate_gets_404_for_every_page_of_a_job(page, finished_job, classmate_client):
    response = classmate_client.get(f"/jobs/{finished_job.code}/{page}")
    assert response.status_code == 404
    assert finished_job.summary.encode() not in response.content


@pytest.mark.parametrize("page", JOB_PAGES[:3])
def test_a_stranger_is_asked_to_log_in_for_a_jobs_pages(page, finished_job, client):
    response = client.get(f"/jobs/{finished_job.code}/{page}")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_a_stranger_gets_404_for_an_artifact(finished_job, client):
    response = client.get(f"/jobs/{finished_job.code}/files/tokenizer.json")
    assert response.status_code == 404
    assert not getattr(response, "streaming", False)


def test_the_owner_downloads_exactly_the_stored_file(finished_job, owner_client):
    response = owner_client.get(f"/jobs/{finished_job.code}/files/tokenizer.json")
    body = b"".join(response.streaming_content)
    assert body == files.artifact_path(finished_job.code, TOKENIZER_FILE).read_bytes()
    assert response["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    "name",
    ["..%2F..%2F..%2Fcourseapp%2Fsettings.py", "..", "tokenizer.json.partial-1", ".tokenizer.json.partial-1", "x"],
)
def test_a_file_name_that_is_not_one_of_the_jobs_artifacts_is_404(name, finished_job, owner_client):
    # Names come from the Artifact rows, never from the URL: nothing else is reachable.
    (files.artifact_dir(finished_job.code) / ".tokenizer.json.partial-1").write_text("half")
    assert owner_client.get(f"/jobs/{finished_job.code}/files/{name}").status_code == 404


def test_a_jobs_code_that_does_not_exist_is_404(owner_client):
    assert owner_client.get("/jobs/00000000-0000-0000-0000-000000000000/").status_code == 404
    assert owner_client.get("/jobs/42/").status_code == 404  # integer ids are not URLs


def test_a_classmate_cannot_cancel_a_job(make_job, classmate_client):
    job = make_job()
    assert classmate_client.post(f"/jobs/{job.code}/cancel/").status_code == 404
    job.refresh_from_db()
    assert job.status == "queued" and not job.cancel_requested


def test_a_classmate_cannot_delete_a_job(finished_job, classmate_client):
    assert classmate_client.post(f"/jobs/{finished_job.code}/delete/").status_code == 404
    assert Job.objects.filter(pk=finished_job.pk).exists()
    assert files.artifact_path(finished_job.code, TOKENIZER_FILE).is_file()


def test_a_stranger_cannot_cancel_or_delete(make_job, finished_job, client):
    job = make_job()
    assert client.post(f"/jobs/{job.code}/cancel/").status_code == 302  # to the login page
    assert client.post(f"/jobs/{finished_job.code}/delete/").status_code == 302
    job.refresh_from_db()
    assert job.status == "queued" and Job.objects.filter(pk=finished_job.pk).exists()


def test_staff_see_every_job_in_the_admin_with_owner_status_and_duration(finished_job, make_job, staff, client):
    queued = make_job()
    client.force_login(staff)
    html = client.get("/admin/workers/job/").content.decode()
    for job in (finished_job, queued):
        assert str(job.code)[:8] in html
    assert "ada" in html and "Succeeded" in html and "Queued" in html
    assert "0:0" in html  # the finished job's duration, m:ss


def test_staff_can_cancel_any_job_from_the_admin(make_job, staff, client):
    job = make_job()
    client.force_login(staff)
    response = client.post("/admin/workers/job/", {"action": "cancel_jobs", "_selected_action": [job.pk]}, follow=True)
    assert "1 removed from the queue" in response.content.decode()
    job.refresh_from_db()
    assert job.status == "cancelled"


def test_staff_cannot_download_a_learners_file(finished_job, staff, client):
    client.force_login(staff)
    assert client.get(f"/jobs/{finished_job.code}/files/tokenizer.json").status_code == 404
