"""Where a job's files live, and how they are written so that none is ever seen half-written.

Every path comes from the job's UUID code and a file name chosen by our code; nothing a learner
typed (an upload's name, a URL) ever becomes part of a path.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from uuid import UUID

from django.conf import settings

UPLOAD_NAME = "corpus.txt"


def artifact_dir(code: UUID) -> Path:
    return Path(settings.ARTIFACTS_DIR) / str(code)


def artifact_path(code: UUID, name: str) -> Path:
    return artifact_dir(code) / name


def upload_path(code: UUID) -> Path:
    return Path(settings.UPLOADS_DIR) / str(code) / UPLOAD_NAME


def work_dir(code: UUID) -> Path:
    """A running job's scratch folder (checkpoints): beside its upload, so whatever removes the
    upload when the job ends (succeeded, failed, cancelled) removes the scratch too.
    """
    return upload_path(code).parent / "work"


def write_atomically(path: Path, write: Callable[[Path], None]) -> int:
    """Calls write(temporary path), then renames the file to `path`. Returns its size.

    A reader, a download or a crash sees either no file or the whole file: the temporary name
    starts with a dot and ends in .partial-<pid>, and only a complete file is renamed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        write(partial)
        with partial.open("rb") as file:
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path.stat().st_size


def store_upload(code: UUID, chunks: Callable[[], Iterable[bytes]]) -> Path:
    """Writes an uploaded file's chunks (an UploadedFile.chunks) as the job's corpus."""
    path = upload_path(code)

    def write(partial: Path) -> None:
        with partial.open("wb") as file:
            for chunk in chunks():
                file.write(chunk)

    write_atomically(path, write)
    return path


def remove_artifacts(code: UUID) -> None:
    shutil.rmtree(artifact_dir(code), ignore_errors=True)


def remove_upload(code: UUID) -> None:
    shutil.rmtree(upload_path(code).parent, ignore_errors=True)


def remove_job_files(code: UUID) -> None:
    remove_artifacts(code)
    remove_upload(code)
