"""Settings come from the environment, refuse garbage, and are production-safe when DEBUG is off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from courseapp.settings import envbool, envint

ROOT = Path(__file__).resolve().parent.parent

PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": "x7!k2-production-like-secret-key-with-enough-length-and-variety-0123456789",
    "ALLOWED_HOSTS": "course.example.org",
    "CSRF_TRUSTED_ORIGINS": "https://course.example.org",
}


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "DJANGO_SETTINGS_MODULE"}}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "courseapp.settings", **env},
        capture_output=True,
        text=True,
    )


def test_envbool_refuses_garbage(monkeypatch):
    monkeypatch.setenv("SOME_FLAG", "yes")
    assert envbool("SOME_FLAG", False) is True
    monkeypatch.setenv("SOME_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="SOME_FLAG='maybe'"):
        envbool("SOME_FLAG", False)


def test_envint_refuses_garbage(monkeypatch):
    monkeypatch.setenv("SOME_NUMBER", "ten")
    with pytest.raises(ImproperlyConfigured, match="not a whole number"):
        envint("SOME_NUMBER", 1)
    monkeypatch.setenv("SOME_NUMBER", "-3")
    with pytest.raises(ImproperlyConfigured, match="below the minimum"):
        envint("SOME_NUMBER", 1, minimum=0)


def test_deploy_check_is_clean_with_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_a_server_without_a_secret_key_refuses_to_start():
    result = manage("check", DEBUG="false", SECRET_KEY="")
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr


def test_a_typo_in_debug_fails_at_boot():
    result = manage("check", DEBUG="ture")
    assert result.returncode != 0
    assert "DEBUG='ture'" in result.stderr


def test_an_unknown_model_precision_fails_at_boot():
    result = manage("check", DEBUG="true", MODEL_DTYPE="float8")
    assert result.returncode != 0
    assert "MODEL_DTYPE='float8': use auto, float32, bfloat16 or float16" in result.stderr


def test_production_responses_carry_the_security_headers():
    script = (
        "import django; django.setup();"
        "from django.test import Client;"
        "r = Client().get('/admin/', secure=True, HTTP_HOST='course.example.org');"
        "print(r.status_code); [print(k + ': ' + v) for k, v in r.headers.items()]"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "courseapp.settings", **PRODUCTION,
             "DATABASE_URL": "sqlite://:memory:"},
        capture_output=True, text=True,
    )  # fmt: skip
    headers = result.stdout
    assert "Strict-Transport-Security: max-age=31536000; includeSubDomains; preload" in headers, result.stderr
    assert "Content-Security-Policy: default-src 'self'" in headers
    assert "X-Frame-Options: DENY" in headers
