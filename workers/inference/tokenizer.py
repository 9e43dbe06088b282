"""The course model's tokenizer, for processes that must not load torch (the web server).

`tokenizers` is a small Rust library; reading the prepared model folder's tokenizer.json takes
about 0.1 s, so each process does it once.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer


@cache
def load_tokenizer(folder: Path) -> Tokenizer:
    from tokenizers import Tokenizer

    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `python manage.py prepare_model`")
    return Tokenizer.from_file(str(path))


def course_tokenizer() -> Tokenizer:
    from django.conf import settings

    return load_tokenizer(settings.MODEL_PATH)
