"""The LoRA lab's job: fine-tune the course model with LoRA; then show the curve and the adapter.

The training itself is workers.training.lora (no Django); this module is the shell around it:
the job's params in, adapter.zip (and adapter-best.zip) and the metrics out, live progress on
the way, and the pages' helpers (the loss curve as server-rendered SVG).

Resuming after a dead worker. A worker killed mid-job (SIGKILL, out of memory, a lost
machine) cannot say so; its job stops sending heartbeats. The reaper (workers.jobs.actions)
asks resume_point() whether the job left a checkpoint in its work folder; if it did, and the
job has been resumed fewer than JOB_MAX_RESUMES times and nobody asked to cancel it, the reaper
puts it back in the queue (running -> queued, a conditional UPDATE, with a note in its stage
and its events) and sends its task again. The worker that claims it finds the checkpoint and
continues from that step with the same batches and random numbers. A job without a checkpoint,
or out of resumes, is failed as before. The work folder lives beside the upload
(files.work_dir), so every way a job ends removes it; a runner that finds its job taken away
(JobLost) keeps it, because the resumed run needs it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from workers.jobs import files
from workers.jobs.actions import publish
from workers.jobs.runner import JobCancelled, JobError, JobLost, JobRunner
from workers.models import Job
from workers.training.lora import (
    Codec,
    DatasetError,
    DatasetSource,
    LoraHyperParameters,
    Progress,
    TrainingStopped,
    build_dataset,
    checkpoint_step,
    train_lora,
    zip_adapter,
)

logger = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.zip"
BEST_ADAPTER_FILE = "adapter-best.zip"
# Live metrics are saved (and published) at most this often, plus at every evaluation.
LIVE_INTERVAL = 0.5
MAX_EVENTS = 50


def source_for(params: dict[str, Any], code: Any) -> DatasetSource:
    name = str(params.get("dataset", ""))
    if name == "upload":
        return DatasetSource(
            "upload",
            files.upload_path(code),
            f"“{params.get('upload_name') or 'your file'}”",
            params.get("format", "text"),
        )
    return DatasetSource(name)


def resume_point(job: Job) -> int | None:
    """The step a dead worker's LoRA job can resume from, or None: then it cannot resume."""
    if job.kind != Job.Kind.LORA or job.cancel_requested or job.resumes >= settings.JOB_MAX_RESUMES:
        return None
    return checkpoint_step(files.work_dir(job.code))


def requeue_note(job: Job, step: int) -> tuple[str, dict[str, Any]]:
    """The stage and the metrics (with a new event) of a job the reaper queues again."""
    stage = f"Its worker stopped; waiting to resume from the checkpoint at step {step}"
    metrics = dict(job.metrics or {})
    events = list(metrics.get("events", []))
    events.append(_event(f"The worker stopped at step {step} or after; queued again to resume from its checkpoint."))
    metrics["events"] = events[-MAX_EVENTS:]
    return stage, metrics


def _event(text: str) -> list[str]:
    return [timezone.now().strftime("%H:%M:%S"), text]


class _Heartbeat:
    """Beats for the job every JOB_HEARTBEAT_SECONDS from a thread, through model loading and
    long steps alike; it stops beating when the process dies, which is what the reaper watches.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            while not self._stop.wait(max(settings.JOB_HEARTBEAT_SECONDS / 2, 0.2)):
                if not self.job.beat():
                    self.lost = True
                    return
        except Exception:
            logger.warning("heartbeat of job %s failed", self.job.code, exc_info=True)
        finally:
            connection.close()  # this thread's own connection


class LoraJobRunner(JobRunner):
    kind = Job.Kind.LORA
    keeps_files_when_lost = True

    def run(self) -> dict[str, Any]:
        job = self.job
        try:
            hp = LoraHyperParameters.from_params(job.params)
            source = source_for(job.params, job.code)
        except ValueError as exc:
            raise JobError(str(exc)) from None
        except TypeError:
            raise JobError("This job's settings are incomplete. Submit it again from the LoRA lab.") from None

        self.live = dict(job.metrics or {})  # a resumed job keeps its curve and events
        self.live.setdefault("events", [])
        self._last_live = 0.0
        self.report("Reading the dataset", None)
        try:
            dataset = build_dataset(source, Codec(settings.MODEL_PATH), hp.seq_len, hp.seed)
        except DatasetError as exc:
            raise JobError(str(exc)) from None
        self.live["dataset"] = dataset.summary()
        if dataset.truncated:
            self.log(f"{dataset.truncated} example(s) were longer than {hp.seq_len} tokens and were cut to fit.")
        if dataset.dropped:
            self.log(f"{dataset.dropped} example(s) had nothing left to learn from after the cut and were left out.")

        with _Heartbeat(job) as heartbeat:
            try:
                result = train_lora(
                    settings.MODEL_PATH,
                    dataset,
                    hp,
                    files.work_dir(job.code),
                    report=self.progress,
                    log=self.log,
                    should_stop=lambda: heartbeat.lost or self.should_stop(),
                )
            except TrainingStopped:
                if heartbeat.lost:
                    raise JobLost from None
                raise JobCancelled from None
            except DatasetError as exc:  # e.g. QLoRA on a worker without CUDA
                raise JobError(str(exc)) from None

        self.check_cancel()
        self.report(f"Saving {ADAPTER_FILE}", 0.99)
        self.write_artifact(ADAPTER_FILE, lambda path: zip_adapter(result.final_dir, path))
        if result.best_dir is not None:
            self.write_artifact(BEST_ADAPTER_FILE, lambda path: zip_adapter(result.best_dir, path))
        self.log("Done: the adapter is ready to download.")
        readme = (result.final_dir / "README.md").read_text()
        return {**result.metrics, "events": self.live["events"], "readme": readme}

    # --- Callbacks of the training loop --------------------------------------------------------------

    def log(self, text: str) -> None:
        self.live["events"] = [*self.live["events"], _event(text)][-MAX_EVENTS:]
        self._save_live(force=True)

    def progress(self, progress: Progress) -> None:
        self.live.update(
            history=progress.history,
            live={
                "step": progress.step,
                "total_steps": progress.total_steps,
                "train_loss": _rounded(progress.train_loss),
                "val_loss": _rounded(progress.val_loss),
                "tokens_per_second": _rounded(progress.tokens_per_second, 1),
                "eta_seconds": _rounded(progress.eta_seconds, 0),
            },
        )
        self._stage = progress.stage
        self._progress = progress.step / progress.total_steps if progress.total_steps else None
        self._save_live(force=progress.val_loss is not None or progress.step in (0, progress.total_steps))

    def _save_live(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_live < LIVE_INTERVAL:
            return
        self._last_live = now
        stage = getattr(self, "_stage", self.job.stage or "Starting")
        if not self.job.report(stage, getattr(self, "_progress", None), metrics=self.live):
            raise JobLost
        publish(self.job)


def _rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


# --- For the pages ---------------------------------------------------------------------------------

CURVE_WIDTH, CURVE_HEIGHT = 560, 220
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 48, 12, 12, 30


def loss_curve(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The train and validation loss as SVG polylines (coordinates computed here), or None.

    Rendered inline by jobs/_lora_curve.html: no script, no style attribute (the CSP allows
    neither), so it updates by being re-rendered with the panel over the job's websocket.
    """
    history = metrics.get("history") or {}
    train = [point for point in history.get("train", []) if _finite(point)]
    val = [point for point in history.get("val", []) if _finite(point)]
    if not train and not val:
        return None
    total = (metrics.get("live") or {}).get("total_steps") or metrics.get("steps") or 1
    values = [point[1] for point in train + val]
    low, high = min(values), max(values)
    if high - low < 1e-6:
        low, high = low - 0.5, high + 0.5
    pad = (high - low) * 0.05
    low, high = low - pad, high + pad
    last = max(total, max(point[0] for point in train + val))
    plot_w = CURVE_WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = CURVE_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def x(step: float) -> float:
        return MARGIN_LEFT + plot_w * (step / last if last else 0)

    def y(loss: float) -> float:
        return MARGIN_TOP + plot_h * (high - loss) / (high - low)

    def points(series: list[list[float]]) -> str:
        return " ".join(f"{x(step):.1f},{y(loss):.1f}" for step, loss in series)

    y_ticks = [{"y": round(y(value), 1), "label": f"{value:.2f}"} for value in _ticks(low, high)]
    x_ticks = [{"x": round(x(step), 1), "label": f"{step:g}"} for step in _ticks(0, last, integer=True)]
    return {
        "width": CURVE_WIDTH,
        "height": CURVE_HEIGHT,
        "left": MARGIN_LEFT,
        "right": CURVE_WIDTH - MARGIN_RIGHT,
        "top": MARGIN_TOP,
        "bottom": CURVE_HEIGHT - MARGIN_BOTTOM,
        "train": points(train),
        "val": points(val),
        "val_dots": [
            {"x": round(x(step), 1), "y": round(y(loss), 1), "step": step, "loss": loss} for step, loss in val
        ],
        "train_last": train[-1] if train else None,
        "val_last": val[-1] if val else None,
        "y_ticks": y_ticks,
        "x_ticks": x_ticks,
        "label_y": CURVE_HEIGHT - 6,
        "label_x": MARGIN_LEFT + plot_w / 2,
    }


def _finite(point: Any) -> bool:
    return isinstance(point, list | tuple) and len(point) == 2 and all(math.isfinite(value) for value in point)


def _ticks(low: float, high: float, count: int = 4, integer: bool = False) -> list[float]:
    span = high - low
    if span <= 0:
        return [low]
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1, round(step))
    first = math.ceil(low / step) * step
    ticks = []
    value = first
    while value <= high + 1e-9:
        ticks.append(value)
        value += step
    return ticks


def lora_context(job: Job) -> dict[str, Any]:
    """What jobs/_lora_result.html shows, live and when finished."""
    metrics = job.metrics or {}
    live = metrics.get("live") or {}
    return {
        "curve": loss_curve(metrics),
        "live": live,
        "events": list(reversed(metrics.get("events", [])))[:12],
        "dataset": metrics.get("dataset"),
        "metrics": metrics if job.status == Job.Status.SUCCEEDED else None,
        "artifacts": list(job.artifacts.all()) if job.status == Job.Status.SUCCEEDED else [],
        "eta": _eta(live.get("eta_seconds")) if job.status == Job.Status.RUNNING else None,
    }


def _eta(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60:02d} s"
