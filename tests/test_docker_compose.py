"""docker-compose.yml stays runnable: every command it names exists in this project."""

from __future__ import annotations

import importlib
import shlex
from pathlib import Path

import pytest
import yaml
from celery.bin.celery import celery as celery_cli
from django.core.management import get_commands

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
APP_SERVICES = {name: spec for name, spec in COMPOSE["services"].items() if spec.get("image") == "llm-course"}
KNOWN_QUEUES = {"cpu", "gpu"}


def commands(spec: dict) -> list[list[str]]:
    """The shell commands a service runs, each split into words ("sh -c" and "&&" unwrapped)."""
    words = shlex.split(spec["command"])
    if words[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in words[2].split("&&")]
    return [words]


def test_every_part_of_the_class_setup_is_there():
    assert set(COMPOSE["services"]) >= {"web", "model", "worker-cpu", "worker-gpu", "beat", "redis", "postgres"}
    assert (ROOT / "Dockerfile").is_file()


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_every_command_exists(name):
    for words in commands(APP_SERVICES[name]):
        program = words[0]
        if program == "python":
            assert words[1] == "manage.py"
            assert words[2] in get_commands(), f"{name}: no management command {words[2]!r}"
        elif program == "celery":
            assert words[1:3] == ["-A", "courseapp"]
            module = importlib.import_module(words[2])
            assert module.celery_app.main == "courseapp"
            assert words[3] in celery_cli.commands, f"{name}: celery has no {words[3]!r} command"
            if "-Q" in words:
                assert set(words[words.index("-Q") + 1].split(",")) <= KNOWN_QUEUES
        elif program == "daphne":
            module_name, attribute = words[-1].split(":")
            assert hasattr(importlib.import_module(module_name), attribute)
        else:
            pytest.fail(f"{name}: unexpected program {program!r}")


def test_the_gpu_worker_asks_for_a_gpu():
    devices = APP_SERVICES["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
