"""Settings for the test suite: the real settings, less what only a public server needs."""

import os

os.environ.setdefault("SECRET_KEY", "tests-only-not-a-secret")

from courseapp.settings import *  # noqa: F403
from courseapp.settings import STORAGES

ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
# Tests talk plain HTTP to local servers.
SECURE_SSL_REDIRECT = False
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = False
SECURE_HSTS_SECONDS = 0
# Hashing passwords slowly is the point in production and a waste of minutes in tests.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
# Serve static files straight from static/, as in development, without a collectstatic step.
WHITENOISE_USE_FINDERS = True

# Tests that run a real Celery worker in a subprocess need a database both processes can open:
# SQLite in a file of this test process (pytest-django would keep it in memory), which the
# worker is pointed at (tests/jobs/conftest.py). PostgreSQL test databases are shared already.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    import tempfile
    from pathlib import Path

    DATABASES["default"]["TEST"] = {  # noqa: F405
        "NAME": str(Path(tempfile.gettempdir()) / f"course-tests-{os.getpid()}.sqlite3")
    }
