from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from lessons.loader import load_course
from lessons.sync import sync_course

PASSWORD = "a-long-test-password-42"


@pytest.fixture(scope="session")
def real_course():
    """The course exactly as shipped in lessons/content, parsed once per test run."""
    return load_course(settings.LESSONS_DIR)


@pytest.fixture
def course(db, real_course):
    """The shipped course, synced into this test's database."""
    sync_course(real_course)


def _user(name: str, **extra) -> User:
    return User.objects.create_user(name, password=PASSWORD, **extra)


@pytest.fixture
def owner(db) -> User:
    return _user("ada")


@pytest.fixture
def classmate(db) -> User:
    return _user("grace")


@pytest.fixture
def staff(db) -> User:
    return _user("teacher", is_staff=True, is_superuser=True)


@pytest.fixture
def owner_client(owner) -> Client:
    client = Client()
    client.force_login(owner)
    return client


@pytest.fixture
def classmate_client(classmate) -> Client:
    client = Client()
    client.force_login(classmate)
    return client
