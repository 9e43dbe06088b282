"""The tokenizer lab's form, and the checks an uploaded text file must pass."""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from django import forms
from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat

from workers.training.bpe import MIN_FREQUENCY_MAX, VOCAB_MAX, VOCAB_MIN, BpeConfig
from workers.training.corpora import BUILTIN_CORPORA
from workers.training.lora import BOUNDS as LORA_BOUNDS
from workers.training.lora import BUILTIN_DATASETS as LORA_BUILTIN_DATASETS
from workers.training.lora import DatasetError as LoraDatasetError
from workers.training.lora import LoraHyperParameters, read_records, sniff_format
from workers.training.quantize import MAX_PROMPT_CHARS

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


def checked_upload(form: forms.Form) -> Any:
    """A lab form's uploaded file (or None), refused when it was over the form's `upload_limit`
    (`upload_too_large`: the upload handler stopped reading it) or is not UTF-8 text."""
    upload = form.cleaned_data.get("file")
    if form.upload_too_large:
        raise forms.ValidationError(
            f"This file is larger than the limit of {filesizeformat(form.upload_limit)}. Upload a smaller one.",
            code="too_large",
        )
    if upload is not None:
        check_text(upload.chunks())
    return upload


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
        return checked_upload(self)

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


class QuantizationForm(forms.Form):
    """The quantization lab's one field: the prompt whose next token the three variants predict."""

    prompt = forms.CharField(
        label="Prompt",
        max_length=MAX_PROMPT_CHARS,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text=f"Up to {MAX_PROMPT_CHARS} characters. The same prompt again is shown at once from the cache.",
        error_messages={
            "required": "Type a prompt: the model needs some text to continue.",
            "max_length": f"Keep the prompt to {MAX_PROMPT_CHARS} characters or fewer (it has %(show_value)d).",
        },
    )


# --- The LoRA lab ------------------------------------------------------------------------------------

LORA_DATASETS = {
    **LORA_BUILTIN_DATASETS,
    "upload": "A file of your own: plain text, or JSON Lines of prompt/completion or chat messages",
}
# What a lesson's `dataset:` option may call a built-in dataset.
LORA_DATASET_ALIASES = {"qa": "course-qa", "course": "course-qa"}
QLORA_UNAVAILABLE = (
    "QLoRA is not offered on this server: it keeps the base model in 4 bits with bitsandbytes' CUDA "
    "kernels, and the training workers here have no CUDA GPU. Plain LoRA on this small model fits anyway."
)


def initial_dataset(name: str | None) -> str:
    """The dataset to preselect: a lesson's `dataset:` option or a link's, if it is one we have."""
    name = LORA_DATASET_ALIASES.get(name or "", name)
    return name if name in LORA_DATASETS else "shakespeare"


def _bounded(field: type[forms.Field], name: str, help_text: str, **kwargs: Any) -> forms.Field:
    bound = LORA_BOUNDS[name]
    low, high = (int(bound.low), int(bound.high)) if field is forms.IntegerField else (bound.low, bound.high)
    message = f"{bound.label} must be between {low:g} and {high:g}."
    default = getattr(LoraHyperParameters(), name)
    return field(
        label=bound.label.removeprefix("The ").capitalize(),
        initial=default,
        min_value=low,
        max_value=high,
        help_text=help_text,
        error_messages={"min_value": message, "max_value": message, "invalid": f"{bound.label} must be a number."},
        **kwargs,
    )


class LoraJobForm(forms.Form):
    dataset = forms.ChoiceField(
        label="Train on",
        choices=list(LORA_DATASETS.items()),
        initial="shakespeare",
        widget=forms.RadioSelect,
        error_messages={
            "invalid_choice": "Unknown dataset “%(value)s”: choose Shakespeare, the course's questions or a file of your own.",
            "required": "Choose what to train on.",
        },
    )
    rank = _bounded(forms.IntegerField, "rank", "1 to 64: the inner size of the two small matrices.")
    alpha = _bounded(forms.FloatField, "alpha", "The update is scaled by alpha / rank.")
    dropout = _bounded(forms.FloatField, "dropout", "0 to 0.5, on the LoRA layers' input.")
    target = forms.ChoiceField(
        label="Layers to adapt",
        choices=[("attention", "Attention (q, k, v, o)"), ("all-linear", "All linear layers (+ gate, up, down)")],
        initial="attention",
        error_messages={"invalid_choice": "Choose “attention” or “all-linear” layers to adapt."},
    )
    learning_rate = _bounded(forms.FloatField, "learning_rate", "For example 0.0002 (2e-4).")
    epochs = _bounded(forms.IntegerField, "epochs", "Passes over the training examples (when max steps is 0).")
    max_steps = _bounded(forms.IntegerField, "max_steps", "Steps to train; 0: as many as the epochs take.")
    seq_len = _bounded(forms.IntegerField, "seq_len", "Tokens per example; longer ones are cut.")
    batch_size = _bounded(forms.IntegerField, "batch_size", "Examples per step.")
    seed = _bounded(forms.IntegerField, "seed", "Fixes the split, the order and the initial weights.")
    checkpoint_every = _bounded(forms.IntegerField, "checkpoint_every", "Steps between checkpoints (for resuming).")
    qlora = forms.BooleanField(label="QLoRA (4-bit base model)", required=False)
    file = forms.FileField(
        label="Your file",
        required=False,
        error_messages={"empty": "This file is empty. Upload a file with some text in it."},
    )

    def __init__(self, *args: Any, upload_limit: int, upload_too_large: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.upload_limit = upload_limit
        self.upload_too_large = upload_too_large
        self.qlora_available = settings.LORA_QLORA_AVAILABLE
        self.fields["file"].help_text = (
            f"Up to {filesizeformat(upload_limit)}, UTF-8. A .jsonl file (or one starting with “{{”) is read as "
            'JSON Lines: {"prompt": …, "completion": …} or {"messages": [{"role": …, "content": …}, …]}; '
            "anything else as plain text."
        )
        self.fields["file"].widget.attrs["accept"] = ".txt,.md,.jsonl,.json,text/plain,application/jsonl"
        if not self.qlora_available:
            self.fields["qlora"].disabled = True
            self.fields["qlora"].help_text = QLORA_UNAVAILABLE
        else:
            self.fields["qlora"].help_text = "The base model in 4 bits (NF4) on the GPU: a quarter of the memory."

    def clean_file(self) -> Any:
        upload = checked_upload(self)
        if upload is not None and self.upload_format(upload) == "jsonl":
            try:
                for _ in read_records(b"".join(upload.chunks()).decode("utf-8")):
                    pass
            except LoraDatasetError as exc:
                raise forms.ValidationError(str(exc), code="jsonl") from None
        return upload

    @staticmethod
    def upload_format(upload: Any) -> str:
        head = next(iter(upload.chunks()), b"")[:1024]
        upload.seek(0)
        return sniff_format(upload.name or "", head)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        dataset = cleaned.get("dataset")
        if dataset == "upload" and not cleaned.get("file") and "file" not in self.errors:
            self.add_error("file", "Choose a file to upload, or pick one of the datasets above.")
        if dataset and dataset != "upload" and cleaned.get("file"):
            self.add_error("dataset", "You chose a file: pick “A file of your own” to train on it.")
        if self.data.get("qlora") and not self.qlora_available:
            # A disabled checkbox is never sent by a browser: this is a hand-made request.
            self.add_error("qlora", QLORA_UNAVAILABLE)
        if not self.errors:
            try:
                self.hyper_parameters()
            except ValueError as exc:
                self.add_error(None, str(exc))
        return cleaned

    def hyper_parameters(self) -> LoraHyperParameters:
        return LoraHyperParameters.from_params(self.cleaned_data)

    def params(self) -> dict[str, Any]:
        """The job's params, as stored on the Job row and read by the worker."""
        data = self.cleaned_data
        params: dict[str, Any] = {"dataset": data["dataset"], **asdict(self.hyper_parameters())}
        if data["dataset"] == "upload":
            # Only shown to its owner; never part of a path (the file is stored as corpus.txt).
            params["upload_name"] = data["file"].name[:100]
            params["upload_bytes"] = data["file"].size
            params["format"] = self.upload_format(data["file"])
        return params
