"""Training a byte-level BPE tokenizer with HF `tokenizers`, and looking inside the result.

`train_bpe` is what the tokenizer job runs: a corpus and a config in, a trained tokenizer and
its measurements out. The helpers below it replay the learned merges on a sentence one merge
at a time and make byte-level tokens readable, for the lab's pages. No Django here.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from workers.training.corpora import Corpus, CorpusError

VOCAB_MIN = 256  # one token per byte: the smallest byte-level vocabulary
VOCAB_MAX = 32_000
MIN_FREQUENCY_MAX = 1_000
MAX_SPECIAL_TOKENS = 8
SPECIAL_TOKEN_MAX_CHARS = 32

# Stages, as the learner sees them.
READING = "Reading the corpus"
MERGING = "Learning merges"
MEASURING = "Measuring on held-out text"

# About this many pieces are held back from training to measure characters per token on text
# the tokenizer has not seen; a corpus of fewer pieces than the minimum is measured on itself.
HELDOUT_PIECES = 25
MIN_PIECES_FOR_HELDOUT = 10

Report = Callable[[str, "float | None"], None]


def _ignore(stage: str, progress: float | None) -> None:
    pass


def _never() -> bool:
    return False


class TrainingStopped(Exception):
    """Training was asked to stop (should_stop returned True) and kept nothing."""


@dataclass(frozen=True)
class BpeConfig:
    vocab_size: int
    min_frequency: int = 2
    special_tokens: tuple[str, ...] = ("<|endoftext|>",)

    def __post_init__(self) -> None:
        if not VOCAB_MIN <= self.vocab_size <= VOCAB_MAX:
            raise ValueError(f"The vocabulary size must be between {VOCAB_MIN:,} and {VOCAB_MAX:,}.")
        if not 1 <= self.min_frequency <= MIN_FREQUENCY_MAX:
            raise ValueError(f"The minimum frequency must be between 1 and {MIN_FREQUENCY_MAX:,}.")
        if len(self.special_tokens) > MAX_SPECIAL_TOKENS:
            raise ValueError(f"Use at most {MAX_SPECIAL_TOKENS} special tokens.")
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise ValueError("Each special token may appear only once.")
        for token in self.special_tokens:
            if not token or len(token) > SPECIAL_TOKEN_MAX_CHARS or any(c.isspace() for c in token):
                raise ValueError(
                    f"Special tokens are 1 to {SPECIAL_TOKEN_MAX_CHARS} characters without spaces; {token!r} is not."
                )
        # The 256 byte tokens come first, then the special tokens, then one token per merge.
        if self.vocab_size < VOCAB_MIN + len(self.special_tokens):
            raise ValueError(
                f"With {len(self.special_tokens)} special token(s) the vocabulary needs at least "
                f"{VOCAB_MIN + len(self.special_tokens)} entries: the 256 bytes come first."
            )


@dataclass(frozen=True)
class BpeResult:
    tokenizer: Tokenizer
    vocab_size: int
    merges: list[tuple[str, str]]
    training_chars: int
    sample_chars: int
    sample_tokens: int
    # False when the corpus was too small to hold some back: then the sample is the training text.
    sample_is_heldout: bool
    seconds: float

    @property
    def chars_per_token(self) -> float:
        return self.sample_chars / self.sample_tokens if self.sample_tokens else 0.0


def new_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE pipeline, the same shape as GPT-2's and the course model's."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def new_trainer(config: BpeConfig) -> trainers.BpeTrainer:
    return trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=list(config.special_tokens),
        # All 256 bytes from the start, so any text can be encoded, seen in training or not.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )


@dataclass
class _Feed:
    """What the training thread has read so far; the calling thread only reads it."""

    consumed_bytes: int = 0
    training_chars: int = 0
    has_text: bool = False
    done_reading: bool = False
    heldout: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def train_bpe(
    corpus: Corpus,
    config: BpeConfig,
    report: Report = _ignore,
    should_stop: Callable[[], bool] = _never,
    poll_seconds: float = 0.2,
) -> BpeResult:
    """Trains a tokenizer on `corpus`. Raises CorpusError or TrainingStopped.

    `report(stage, progress)` and `should_stop()` are called only from the calling thread,
    about every `poll_seconds`, also while the Rust trainer runs (it releases the GIL in a
    thread of its own), so the caller can write heartbeats and read a cancel flag. Progress is
    the fraction of the whole training, or None while the merges are learned (no way to tell).
    Reading stops at the next piece once should_stop() says so; learning merges cannot be
    interrupted, so a stop then takes effect when they are done, and nothing is returned.
    """
    started = time.perf_counter()
    total_bytes = max(1, corpus.size_bytes)
    estimated_pieces = total_bytes // 4096
    every = max(MIN_PIECES_FOR_HELDOUT, estimated_pieces // HELDOUT_PIECES)
    hold_out = estimated_pieces >= MIN_PIECES_FOR_HELDOUT
    feed = _Feed()
    stop = threading.Event()

    def pieces() -> Iterator[str]:
        for index, (text, consumed) in enumerate(corpus.pieces()):
            if stop.is_set():
                raise TrainingStopped
            feed.consumed_bytes = consumed
            if hold_out and index % every == every // 2:
                feed.heldout.append(text)
                continue
            feed.training_chars += len(text)
            feed.has_text = feed.has_text or not text.isspace()
            if not hold_out:
                feed.kept.append(text)  # small: measured on itself afterwards
            yield text
        feed.done_reading = True

    tokenizer = new_tokenizer()
    trainer = new_trainer(config)
    failures: list[BaseException] = []

    def train() -> None:
        try:
            tokenizer.train_from_iterator(pieces(), trainer=trainer)
        except BaseException as exc:  # handed to the calling thread, which raises it
            failures.append(exc)

    thread = threading.Thread(target=train, name="bpe-training", daemon=True)
    stop_requested = False
    report(READING, 0.0)
    thread.start()
    try:
        while True:
            thread.join(poll_seconds)
            if not thread.is_alive():
                break
            if feed.done_reading:
                report(MERGING, None)
            else:
                report(READING, 0.6 * feed.consumed_bytes / total_bytes)
            if not stop_requested and should_stop():
                stop_requested = True
                stop.set()
    finally:
        # Also when this thread is interrupted (a time limit): the reader stops at its next piece.
        stop.set()
    if stop_requested:
        raise TrainingStopped
    if failures:
        raise failures[0]
    if not feed.has_text:
        raise CorpusError("There is no text to learn from: the corpus is empty.")

    report(MEASURING, 0.9)
    sample = feed.heldout or feed.kept
    sample_tokens = sum(len(encoding.ids) for encoding in tokenizer.encode_batch(sample))
    return BpeResult(
        tokenizer=tokenizer,
        vocab_size=tokenizer.get_vocab_size(),
        merges=merges_of(tokenizer),
        training_chars=feed.training_chars,
        sample_chars=sum(len(text) for text in sample),
        sample_tokens=sample_tokens,
        sample_is_heldout=bool(feed.heldout),
        seconds=time.perf_counter() - started,
    )


def merges_of(tokenizer: Tokenizer) -> list[tuple[str, str]]:
    """The learned merges in the order they were learned (their rank)."""
    model = json.loads(tokenizer.to_str())["model"]
    # tokenizers writes [left, right] pairs; files from before 0.20 hold "left right" strings.
    return [tuple(pair) if isinstance(pair, list) else tuple(pair.split(" ", 1)) for pair in model["merges"]]


# --- Replaying merges, one at a time -------------------------------------------------------------

_BYTE_LEVEL = pre_tokenizers.ByteLevel(add_prefix_space=False)


def tokenize_with_merges(text: str, merges: Sequence[tuple[str, str]], special_tokens: Sequence[str] = ()) -> list[str]:
    """`text` as the tokenizer would split it after learning only `merges` (byte-level tokens).

    BPE applies the earliest-learned merge first; that is exactly what the trained tokenizer
    does with its whole list, so with every merge this equals tokenizer.encode(text).tokens.
    """
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    tokens: list[str] = []
    for part in _split_special(text, special_tokens):
        if part in special_tokens:
            tokens.append(part)
            continue
        for word, _ in _BYTE_LEVEL.pre_tokenize_str(part):
            tokens.extend(_merge_word(list(word), ranks))
    return tokens


def _merge_word(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    while len(symbols) > 1:
        best = min(zip(symbols, symbols[1:], strict=False), key=lambda pair: ranks.get(pair, len(ranks)))
        if best not in ranks:
            return symbols
        # Merge every occurrence, left to right. A pair that uses the new symbol was learned
        # later, so it cannot outrank this one: the same as merging one occurrence at a time.
        merged: list[str] = []
        i = 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def _split_special(text: str, special_tokens: Sequence[str]) -> list[str]:
    if not special_tokens:
        return [text] if text else []
    pattern = "(" + "|".join(re.escape(token) for token in sorted(special_tokens, key=len, reverse=True)) + ")"
    return [part for part in re.split(pattern, text) if part]


# --- Making tokens readable --------------------------------------------------------------------------


@cache
def _byte_of_char() -> dict[str, int]:
    """Byte-level BPE writes each byte as a printable character (GPT-2's table); this undoes it.

    Bytes that are printable Latin-1 stand for themselves; the others (controls, space, soft
    hyphen...) are moved, in order, to the characters from U+0100 on.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    char_of = {byte: chr(byte) for byte in printable}
    moved = 0
    for byte in range(256):
        if byte not in char_of:
            char_of[byte] = chr(256 + moved)
            moved += 1
    return {char: byte for byte, char in char_of.items()}


_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def visible(text: str) -> str:
    """Spaces, line breaks and other invisible characters made visible."""
    return "".join(_VISIBLE.get(char, char if char.isprintable() else f"\\x{ord(char):02x}") for char in text)


def readable(token: str) -> str:
    """A byte-level token as a person reads it: its bytes decoded, whitespace made visible.

    A token that holds part of a multi-byte character shows the bytes it has, like "\\xe2".
    """
    table = _byte_of_char()
    if token and all(char in table for char in token):
        token = bytes(table[char] for char in token).decode("utf-8", errors="backslashreplace")
    return visible(token)


@dataclass(frozen=True)
class ShownToken:
    text: str
    id: int


def encode_for_display(tokenizer: Tokenizer, text: str) -> list[ShownToken]:
    encoding = tokenizer.encode(text, add_special_tokens=False)
    # Only byte-level tokenizers spell bytes as characters; others' tokens are text already.
    show = readable if isinstance(tokenizer.decoder, decoders.ByteLevel) else visible
    return [ShownToken(show(token), token_id) for token, token_id in zip(encoding.tokens, encoding.ids, strict=True)]


def characters_for_display(text: str) -> list[ShownToken]:
    """A character-level tokenizer: one token per character, its id the Unicode code point."""
    return [ShownToken(visible(char), ord(char)) for char in text]
