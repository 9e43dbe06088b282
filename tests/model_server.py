"""Starting a real model server process for tests and benchmarks."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from workers.inference.protocol import live_servers

ROOT = Path(__file__).resolve().parent.parent


def start_model_server(redis_url: str, log_path: Path, **env: str) -> subprocess.Popen:
    """`manage.py serve_model` on `redis_url`; returns once it has announced itself."""
    before = {server["id"] for server in asyncio.run(live_servers(redis_url))}
    full_env = {**os.environ, "REDIS_URL": redis_url, **env}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "serve_model"], cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve_model exited: {log_path.read_text()[-3000:]}")
        if {server["id"] for server in asyncio.run(live_servers(redis_url))} - before:
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
