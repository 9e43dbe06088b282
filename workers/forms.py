"""The tokenizer lab's form, and the checks an uploaded text file must pass."""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from typing import Any

from django import forms
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat

from workers.training.bpe import MIN_FREQUENCY_MAX, VOCAB_MAX, VOCAB_MIN, BpeConfig
from workers.training.corpora import BUILTIN_CORPORA

# A few control characters are normal in text files; the others mean it is not text.
_TEXT_CONTROLS = {"\t", "\n", "\r", "\f", "\v", "\x1b"}


class LimitedUploadHandler(FileUploadHandler):
    """Stops reading an upload as soon as it passes `limit` bytes, before anything stores it.

    It comes first among the request's upload handlers, so the handlers after it (Django's,
    which spool to memory or a temporary file) never receive more than the limit.
    """

    def __init__(self, request: HttpRequest, limit: int) -> None:
        super().__init__(request)
        self.limit = limit
        self.too_large = False

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        if start + len(raw_data) > self.limit:
            self.too_large = True
            # connection_reset: do not read the rest of the body either.
            raise StopUpload(connection_reset=True)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the next handler makes the file


def check_text(chunks: Iterable[bytes]) -> None:
    """Raises ValidationError unless the bytes are non-empty UTF-8 text. Reads them in one pass."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    seen = 0
    has_text = False
    for chunk in chunks:
        if b"\x00" in chunk:
            raise forms.ValidationError(
                "This looks like a binary file (it contains zero bytes), not text. Upload a plain text file.",
                code="binary",
            )
        try:
            text = decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            raise forms.ValidationError(
                f"This file is not valid UTF-8 text (the first bad byte is number {seen + exc.start + 1:,}). "
                "Save it as UTF-8 (“Unicode”) text and upload it again.",
                code="encoding",
            ) from None
        controls = sum(1 for char in text if char < " " and char not in _TEXT_CONTROLS)
        if controls > max(8, len(text) // 100):
            raise forms.ValidationError(
                "This looks like a binary file (it is full of control characters), not text. Upload a plain text file.",
                code="binary",
            )
        has_text = has_text or not text.isspace() and bool(text)
        seen += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise forms.ValidationError(
            "This file is not valid UTF-8 text: it ends in the middle of a character. Save it as UTF-8 and upload it again.",
            code="encoding",
        ) from None
    if not has_text:
        raise forms.ValidationError(
            "This file is empty (or only blank space). Upload a file with some text in it.", code="empty"
        )


def initial_corpus(name: str | None) -> str:
    """The corpus to preselect: a lesson's `corpus:` option or a link's, if it is one we have."""
    return name if name in BUILTIN_CORPORA or name == "upload" else "shakespeare"


class TokenizerJobForm(forms.Form):
    corpus = forms.ChoiceField(
        label="Train on",
        choices=[*BUILTIN_CORPORA.items(), ("upload", "A text file of your own")],
        initial="shakespeare",
        widget=forms.RadioSelect,
        error_messages={
            "invalid_choice": "Unknown corpus “%(value)s”: choose Shakespeare, the Bible, the course or a file of your own.",
            "required": "Choose what to train on.",
        },
    )
    file = forms.FileField(
        label="Your text file",
        required=False,
        error_messages={"empty": "This file is empty. Upload a file with some text in it."},
    )
    vocab_size = forms.IntegerField(
        label="Vocabulary size",
        initial=2000,
        min_value=VOCAB_MIN,
        max_value=VOCAB_MAX,
        help_text=f"{VOCAB_MIN:,} (just the bytes) to {VOCAB_MAX:,}.",
        error_messages={
            "min_value": f"The vocabulary size must be between {VOCAB_MIN:,} and {VOCAB_MAX:,}.",
            "max_value": f"The vocabulary size must be between {VOCAB_MIN:,} and {VOCAB_MAX:,}.",
            "invalid": "Enter the vocabulary size as a whole number, like 2000.",
        },
    )
    min_frequency = forms.IntegerField(
        label="Minimum frequency",
        initial=2,
        min_value=1,
        max_value=MIN_FREQUENCY_MAX,
        help_text="A pair must occur this often to be merged.",
        error_messages={
            "min_value": f"The minimum frequency must be between 1 and {MIN_FREQUENCY_MAX:,}.",
            "max_value": f"The minimum frequency must be between 1 and {MIN_FREQUENCY_MAX:,}.",
        },
    )
    special_tokens = forms.CharField(
        label="Special tokens",
        required=False,
        initial="<|endoftext|>",
        max_length=300,
        help_text="Separated by spaces; they get the first ids.",
    )

    def __init__(self, *args: Any, upload_limit: int, upload_too_large: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.upload_limit = upload_limit
        self.upload_too_large = upload_too_large
        self.fields["file"].help_text = f"Plain UTF-8 text, up to {filesizeformat(upload_limit)}."
        self.fields["file"].widget.attrs["accept"] = ".txt,.md,.csv,.json,.jsonl,text/plain"

    def clean_file(self) -> Any:
        upload = self.cleaned_data.get("file")
        if self.upload_too_large:
            raise forms.ValidationError(
                f"This file is larger than the limit of {filesizeformat(self.upload_limit)}. Upload a smaller one.",
                code="too_large",
            )
        if upload is not None:
            check_text(upload.chunks())
        return upload

    def clean_special_tokens(self) -> tuple[str, ...]:
        return tuple(self.cleaned_data.get("special_tokens", "").replace(",", " ").split())

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        corpus = cleaned.get("corpus")
        if corpus == "upload" and not cleaned.get("file") and "file" not in self.errors:
            self.add_error("file", "Choose a text file to upload, or pick one of the corpora above.")
        if corpus and corpus != "upload" and cleaned.get("file"):
            self.add_error("corpus", "You chose a file: pick “A text file of your own” to train on it.")
        if not self.errors:
            try:
                BpeConfig(cleaned["vocab_size"], cleaned["min_frequency"], cleaned["special_tokens"])
            except ValueError as exc:
                self.add_error(None, str(exc))
        return cleaned

    def params(self) -> dict[str, Any]:
        """The job's params, as stored on the Job row and read by the worker."""
        data = self.cleaned_data
        params: dict[str, Any] = {
            "corpus": data["corpus"],
            "vocab_size": data["vocab_size"],
            "min_frequency": data["min_frequency"],
            "special_tokens": list(data["special_tokens"]),
        }
        if data["corpus"] == "upload":
            # Only shown to its owner; never part of a path (the file is stored as corpus.txt).
            params["upload_name"] = data["file"].name[:100]
            params["upload_bytes"] = data["file"].size
        return params
