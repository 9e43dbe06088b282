"""Browser tests: Playwright drives Debian's Chromium against a real server process.

The server is daphne running the real ASGI app on a SQLite file of its own, so a test sees
what a learner sees: the real middleware, static files, CSP and htmx.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a real daphne server with the course synced into a fresh database."""
    data = tmp_path_factory.mktemp("server")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "courseapp.settings_test",
        "DATA_DIR": str(data),
        "DATABASE_URL": f"sqlite:///{data / 'browser.sqlite3'}",
        "MODEL_PATH": str(settings.MODEL_PATH),  # the web process reads the course tokenizer
    }
    for command in (["migrate", "--noinput", "-v", "0"], ["sync_lessons"]):
        subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True, capture_output=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(data / "daphne.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "courseapp.asgi:application"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _wait_for(url, proc, data / "daphne.log")
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


def _wait_for(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/", timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"daphne did not start: {log.read_text()}") from None
            time.sleep(0.2)


@pytest.fixture
def console_errors(page) -> list[str]:
    """Errors the page logs (CSP violations, failed scripts); tests assert there are none."""
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors
