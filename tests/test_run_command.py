"""`./course run` starts everything on a laptop, and Ctrl-C stops everything it started."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from celery import Celery
from django.conf import settings

from tests.live_server import free_port
from workers.inference.protocol import live_servers

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.sqlite_only  # it runs the app on its own SQLite file


class Launcher:
    def __init__(self, data_dir: Path, port: int) -> None:
        env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DATABASE_URL", "DJANGO_SETTINGS_MODULE"}}
        env["DATA_DIR"] = str(data_dir)
        env["MODEL_PATH"] = str(settings.MODEL_PATH)  # the prepared model, not a second conversion
        self.proc = subprocess.Popen(
            [str(ROOT / "course"), "run", "--port", str(port)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.output.append(line)
            if match := re.search(pattern, line):
                return match
        pytest.fail(f"never saw {pattern!r}; output:\n{''.join(self.output)}")

    def rest(self, timeout: float = 30) -> str:
        self.proc.wait(timeout)
        time.sleep(0.2)
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return "".join(self.output)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_run_starts_redis_worker_and_web_and_ctrl_c_stops_them(tmp_path):
    port = free_port()
    launcher = Launcher(tmp_path, port)
    try:
        redis_url = launcher.wait_for(r"Started a private Redis at (redis://\S+)").group(1)
        launcher.wait_for(rf"The course is running: open http://localhost:{port}/")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as response:
            assert "How large language models work" in response.read().decode()

        # The worker answers on the private Redis, and the model server has announced itself.
        replies = Celery(broker=redis_url).control.ping(timeout=5)
        assert any(name.startswith("course-") for reply in replies for name in reply), replies
        servers = asyncio.run(live_servers(redis_url))
        assert [server["model"] for server in servers] == [settings.MODEL_PATH.name]

        # A second launcher on the same data refuses to start, and harms nothing.
        second = subprocess.run(
            [str(ROOT / "course"), "run", "--port", str(free_port())],
            env={**os.environ, "DATA_DIR": str(tmp_path), "MODEL_PATH": str(settings.MODEL_PATH)},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 1
        assert "already running" in second.stderr
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as response:
            assert response.status == 200
    finally:
        launcher.proc.send_signal(signal.SIGINT)  # what Ctrl-C in its terminal sends
        output = launcher.rest()

    assert launcher.proc.returncode == 0, output
    pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", output)]
    assert len(pids) == 4, output  # redis, worker, model server, web
    assert not [pid for pid in pids if alive(pid)]
    assert "Stopped every process this command started" in output

    # Running it again on the same data is harmless: the lessons are already there.
    again = Launcher(tmp_path, port)
    try:
        again.wait_for(r"Synced 8 modules, \d+ lessons \(.*lessons unchanged")
        again.wait_for("The course is running")
    finally:
        again.proc.send_signal(signal.SIGINT)
        again.rest()
    assert again.proc.returncode == 0
