"""Sign up, log in, log out, change password; the admin is for staff only."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def test_signing_up_logs_you_in_and_returns_you_to_the_lesson(client: Client, course):
    response = client.post(
        "/accounts/signup/",
        {"username": "newbie", "password1": PASSWORD, "password2": PASSWORD, "next": "/learn/the-slot-machine/"},
    )
    assert (response.status_code, response["Location"]) == (302, "/learn/the-slot-machine/")
    assert client.get("/accounts/").status_code == 200
    assert User.objects.filter(username="newbie").exists()


def test_signup_refuses_bad_input_with_messages(client: Client, owner):
    response = client.post("/accounts/signup/", {"username": "ada", "password1": "123", "password2": "456"})
    html = response.content.decode()
    assert response.status_code == 200
    assert "A user with that username already exists." in html
    assert "The two password fields didn" in html
    assert User.objects.count() == 1


def test_signup_ignores_a_next_url_on_another_site(client: Client):
    response = client.post(
        "/accounts/signup/",
        {"username": "newbie", "password1": PASSWORD, "password2": PASSWORD, "next": "https://evil.example/"},
    )
    assert response["Location"] == "/"


def test_log_in_and_log_out(client: Client, owner):
    response = client.post("/accounts/login/", {"username": "ada", "password": PASSWORD})
    assert response.status_code == 302
    assert "ada" in client.get("/").content.decode()
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/accounts/").status_code == 302


def test_a_wrong_password_is_refused(client: Client, owner):
    response = client.post("/accounts/login/", {"username": "ada", "password": "wrong"})
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()


def test_changing_the_password(owner_client: Client, owner):
    new = "another-long-password-77"
    response = owner_client.post(
        "/accounts/password/", {"old_password": PASSWORD, "new_password1": new, "new_password2": new}
    )
    assert response.status_code == 302
    owner.refresh_from_db()
    assert owner.check_password(new)


def test_the_account_page_needs_a_login(client: Client):
    response = client.get("/accounts/")
    assert response["Location"] == "/accounts/login/?next=/accounts/"


def test_staff_see_lessons_and_progress_in_the_admin(staff, owner_client: Client, course):
    client = Client()
    client.force_login(staff)
    for url in ["/admin/lessons/lesson/", "/admin/lessons/lessonprogress/", "/admin/lessons/quizanswer/",
                "/admin/auth/user/", "/admin/lessons/module/"]:  # fmt: skip
        assert client.get(url).status_code == 200, url
    assert owner_client.get("/admin/lessons/lesson/").status_code == 302
