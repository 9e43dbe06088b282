from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from lessons.loader import load_course
from lessons.sync import sync_course
from tests.model_server import start_model_server, stop

# The `server` fixture: a real daphne process (browser and HTTP-client tests).
pytest_plugins = ["tests.live_server"]

PASSWORD = "a-long-test-password-42"


@pytest.fixture(autouse=True)
def fresh_channel_layer():
    """A new channel layer per test: its asyncio locks belong to one event loop, and
    pytest-asyncio gives every test a loop of its own."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


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


@pytest.fixture(scope="session")
def model_server(tmp_path_factory):
    """A real `serve_model` process on the tests' Redis, with room for 2 rows (so queues form)."""
    # One thread: the test process, workers and servers share two cores, and torch's thread
    # barriers stall badly when a thread of theirs waits for a core.
    proc = start_model_server(
        settings.REDIS_URL, tmp_path_factory.mktemp("model") / "serve_model.log", MODEL_MAX_ROWS="2", MODEL_THREADS="1"
    )
    yield proc
    stop(proc)
