"""Starting a real model server process for tests and benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import redis

from workers.inference.protocol import PRESENCE_PREFIX

ROOT = Path(__file__).resolve().parent.parent


def announced(redis_url: str) -> set[str]:
    """Presence keys of model servers, read with the blocking client (tests may run inside an
    event loop, as Playwright's sync API does)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return {key.decode() for key in client.scan_iter(match=PRESENCE_PREFIX + "*")}
    finally:
        client.close()


def start_model_server(redis_url: str, log_path: Path, **env: str) -> subprocess.Popen:
    """`manage.py serve_model` on `redis_url`; returns once it has announced itself."""
    before = announced(redis_url)
    full_env = {**os.environ, "REDIS_URL": redis_url, **env}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "serve_model"], cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve_model exited: {log_path.read_text()[-3000:]}")
        if announced(redis_url) - before:
            return proc
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"serve_model did not announce itself: {log_path.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
