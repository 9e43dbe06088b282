"""A real Celery worker in a subprocess, for the tests and the benchmark.

It runs the project's own worker command against whatever database and Redis the environment
names, logs to a file (the tests read it), and is stopped by its process group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[2]
CELERY = Path(sys.executable).with_name("celery")


def database_url(settings_dict: dict) -> str:
    """A DATABASE_URL for the database Django is connected to (the test database, once set up)."""
    if settings_dict["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{settings_dict['NAME']}"
    user = quote(settings_dict.get("USER") or "")
    password = quote(settings_dict.get("PASSWORD") or "")
    credentials = f"{user}:{password}@" if password else f"{user}@" if user else ""
    port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
    return f"postgres://{credentials}{settings_dict.get('HOST') or '127.0.0.1'}{port}/{settings_dict['NAME']}"


class Worker:
    def __init__(self, env: dict[str, str], log: Path, beat_schedule: Path | None = None, name: str = "tests") -> None:
        self.log = log
        self.env = env
        args = [str(CELERY), "-A", "courseapp", "worker", "-Q", "cpu,gpu", "--concurrency", "1",
                "--loglevel", "INFO", "--hostname", f"{name}-{os.getpid()}@%h",
                "--without-mingle", "--without-gossip", "--without-heartbeat"]  # fmt: skip
        if beat_schedule is not None:
            # Beat inside the worker, as `./course run` does: it sends the reaper on schedule.
            args += ["--beat", "--schedule", str(beat_schedule)]
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.wait_ready()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while " ready." not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Celery worker did not start:\n{self.output()}")
            time.sleep(0.1)

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker never logged {text!r}:\n{self.output()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def purge_job_queues() -> None:
    """Drops messages left in the job queues by an earlier run that was interrupted."""
    from courseapp.celery import app

    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in ("cpu", "gpu"):
            channel.queue_purge(queue)
