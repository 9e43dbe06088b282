"""The web process and the Celery worker's processes never load torch or transformers for jobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.jobs.conftest import wait_for
from tests.subprocess_checks import assert_runs_in_a_fresh_process


def test_the_web_side_of_jobs_imports_neither_torch_nor_transformers():
    script = (
        "import sys, django; django.setup()\n"
        "import courseapp.asgi, courseapp.urls, workers.views, workers.consumers, workers.admin, workers.tasks\n"
        "from workers.jobs import trained_tokenizers_for\n"
        "heavy = sorted({'torch', 'transformers', 'peft'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    assert_runs_in_a_fresh_process(script)


@pytest.mark.django_db(transaction=True)
def test_the_worker_never_maps_torch_even_after_a_tokenizer_job(make_job, worker):
    wait_for(make_job(), "succeeded")
    parent = worker.proc.pid
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    for pid in [parent, *map(int, children)]:
        assert "libtorch" not in Path(f"/proc/{pid}/maps").read_text(), pid
