"""Browser tests: Playwright drives Debian's Chromium against a real server process.

The server (the `server` fixture, tests/live_server.py) is daphne running the real ASGI app on
a SQLite file of its own, so a test sees what a learner sees: the real middleware, static
files, CSP and htmx.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# Without these, Chromium tries to reach Google's services, which this network refuses.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    # `playwright install` cannot download browsers here: use the system's Chromium.
    return {
        **browser_type_launch_args,
        "executable_path": os.environ.get("CHROMIUM", "/usr/bin/chromium"),
        "args": CHROMIUM_FLAGS,
    }


@pytest.fixture
def console_errors(page) -> list[str]:
    """Errors the page logs (CSP violations, failed scripts); tests assert there are none."""
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def sign_up(page, base_url: str, username: str, next_path: str) -> None:
    """Signs a new learner up through the form, landing on `next_path`."""
    from tests.conftest import PASSWORD

    page.goto(f"{base_url}/accounts/signup/?next={next_path}")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password confirmation").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()


@contextmanager
def course_with_worker(data: Path, name: str) -> Iterator[str]:
    """The course on daphne plus a real Celery worker, sharing one database and data folder;
    yields the course's URL."""
    from django.conf import settings

    from tests.jobs.worker import Worker, purge_job_queues
    from tests.live_server import course_environment, running_daphne

    env = course_environment(data, REDIS_URL=settings.REDIS_URL)
    purge_job_queues()
    worker = Worker(env, data / "worker.log", name=name)
    try:
        with running_daphne(env, data) as url:
            yield url
    finally:
        worker.stop()
