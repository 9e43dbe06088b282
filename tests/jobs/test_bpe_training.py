"""workers.training on its own (no Django, no queue): corpora, training, replaying merges, readable tokens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from workers.training.bpe import (
    MERGING,
    READING,
    BpeConfig,
    TrainingStopped,
    characters_for_display,
    readable,
    tokenize_with_merges,
    train_bpe,
)
from workers.training.corpora import CorpusError, builtin_corpus, upload_corpus

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ["Wherefore art thou?", "the cat sat on the mat", "naïve café 🙂 — «quotes»", "  spaces\n\nand\ttabs  "]


@pytest.fixture
def small_corpus(tmp_path: Path):
    path = tmp_path / "cats.txt"
    path.write_text("the cat sat on the mat, the cat ate the rat; that is that.\n" * 50, encoding="utf-8")
    return upload_corpus(path, "cats.txt")


def test_the_first_merge_is_the_commonest_pair(small_corpus):
    result = train_bpe(small_corpus, BpeConfig(vocab_size=280, special_tokens=()))
    assert result.merges[0] == ("a", "t")
    assert result.vocab_size == 256 + len(result.merges)


def test_replaying_every_merge_splits_text_exactly_like_the_trained_tokenizer(small_corpus):
    result = train_bpe(small_corpus, BpeConfig(vocab_size=300, min_frequency=1))
    for text in [*SAMPLES, "a <|endoftext|> b"]:
        replayed = tokenize_with_merges(text, result.merges, ["<|endoftext|>"])
        assert replayed == result.tokenizer.encode(text).tokens


def test_replaying_no_merge_gives_one_token_per_byte(small_corpus):
    result = train_bpe(small_corpus, BpeConfig(vocab_size=300))
    assert len(tokenize_with_merges("café", result.merges[:0])) == len("café".encode())


def test_progress_is_reported_by_stage_and_training_can_be_stopped_while_reading():
    corpus = builtin_corpus("shakespeare")
    stages = []
    with pytest.raises(TrainingStopped):
        train_bpe(
            corpus, BpeConfig(vocab_size=1000), report=lambda s, p: stages.append((s, p)), should_stop=lambda: True
        )
    assert stages[0] == (READING, 0.0) and MERGING not in {stage for stage, _ in stages}


def test_a_large_corpus_is_measured_on_text_held_back_from_training():
    corpus = builtin_corpus("course", ROOT / "lessons" / "content")
    stages = []
    result = train_bpe(corpus, BpeConfig(vocab_size=1000), report=lambda s, p: stages.append(s))
    assert result.sample_is_heldout and 0 < result.sample_chars < corpus.size_bytes // 5
    assert result.training_chars + result.sample_chars >= corpus.size_bytes * 0.95
    assert 2.5 < result.chars_per_token < 5
    assert stages[-1] == "Measuring on held-out text"


def test_a_tiny_corpus_is_measured_on_itself(small_corpus):
    result = train_bpe(small_corpus, BpeConfig(vocab_size=300))
    assert not result.sample_is_heldout and result.sample_chars == result.training_chars


def test_a_corpus_with_no_text_is_refused(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text("\n\n   \n")
    with pytest.raises(CorpusError, match="no text to learn from"):
        train_bpe(upload_corpus(path, "blank.txt"), BpeConfig(vocab_size=300))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vocab_size": 100}, "between 256 and 32,000"),
        ({"vocab_size": 40000}, "between 256 and 32,000"),
        ({"vocab_size": 1000, "min_frequency": 0}, "minimum frequency"),
        ({"vocab_size": 257, "special_tokens": ("<a>", "<b>")}, "at least 258 entries"),
        ({"vocab_size": 1000, "special_tokens": ("has space",)}, "without spaces"),
    ],
)
def test_a_config_out_of_range_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BpeConfig(**kwargs)


def test_the_packaged_corpora_are_found_without_importing_their_packages():
    script = (
        "import sys; from workers.training.corpora import builtin_corpus\n"
        "s = builtin_corpus('shakespeare'); b = builtin_corpus('bible')\n"
        "print(len(s.paths), s.size_bytes, b.paths[0].name, b.size_bytes)\n"
        "assert not {'shksprdata', 'bible'} & set(sys.modules), 'imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    works, size, name, bible = result.stdout.split()
    assert works == "42" and 5_000_000 < int(size) < 5_100_000
    assert name == "kjv.jsonl" and int(bible) > 4_000_000


def test_the_bible_is_read_as_verses_not_json():
    text, _ = next(iter(builtin_corpus("bible").pieces()))
    assert text.startswith("In the beginning God created the heaven and the earth.\n")
    assert "citation" not in text


def test_an_unknown_corpus_is_refused():
    with pytest.raises(CorpusError, match="Unknown corpus 'poems'"):
        builtin_corpus("poems")


@pytest.mark.parametrize(
    ("token", "shown"),
    [("Ġthe", "␣the"), ("Ċ", "↵"), ("ĠcafÃ©", "␣café"), ("ðŁ", "\\xf0\\x9f"), ("<|endoftext|>", "<|endoftext|>")],
)
def test_byte_level_tokens_are_shown_as_people_read_them(token, shown):
    assert readable(token) == shown


def test_a_character_level_tokenizer_gives_one_token_per_character():
    tokens = characters_for_display("Hé y")
    assert [(t.text, t.id) for t in tokens] == [("H", 72), ("é", 233), ("␣", 32), ("y", 121)]
