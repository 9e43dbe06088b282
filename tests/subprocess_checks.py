"""Running a check in a fresh Python process, where nothing the tests imported is loaded yet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def assert_runs_in_a_fresh_process(script: str) -> None:
    """Runs `script` with Django's test settings in a new interpreter; fails with its stderr."""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT, capture_output=True, text=True, env={"DJANGO_SETTINGS_MODULE": "courseapp.settings_test", "PATH": ""},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
