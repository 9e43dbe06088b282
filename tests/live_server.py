"""A real daphne server process running the whole ASGI app, for browser and HTTP client tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent


class LiveServer(str):
    """The server's base URL (so `server + "/path"` works), with the environment it runs in."""

    env: dict[str, str]

    def manage(self, *args: str) -> str:
        """Runs a management command against the server's database; returns its output."""
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=True, capture_output=True, text=True
        )
        return done.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def course_environment(data: Path, **extra: str) -> dict[str, str]:
    """Environment for a server process on its own SQLite file in `data`, migrated and synced."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "courseapp.settings_test",
        "DATA_DIR": str(data),
        "DATABASE_URL": f"sqlite:///{data / 'server.sqlite3'}",
        "MODEL_PATH": str(settings.MODEL_PATH),  # the web process reads the course tokenizer
        **extra,
    }
    for command in (["migrate", "--noinput", "-v", "0"], ["sync_lessons"]):
        subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True, capture_output=True)
    return env


@contextmanager
def running_daphne(env: dict[str, str], data: Path) -> Iterator[LiveServer]:
    """daphne serving the whole ASGI app with `env`, until the block ends."""
    port = free_port()
    url = LiveServer(f"http://127.0.0.1:{port}")
    url.env = env
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


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The base URL of a real daphne server with the course synced into a fresh database."""
    data = tmp_path_factory.mktemp("server")
    with running_daphne(course_environment(data), data) as url:
        yield url


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
