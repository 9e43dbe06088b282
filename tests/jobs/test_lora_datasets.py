"""Building LoRA datasets: which tokens carry loss, the split, truncation and every bad input.

No worker: the same code builds the preview in the web process (only the QLoRA refusal imports torch).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.conf import settings

from workers.training.lora import (
    IGNORE,
    Codec,
    DatasetError,
    DatasetSource,
    LoraHyperParameters,
    build_dataset,
    preview_rows,
    split,
    total_steps,
)


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec(settings.MODEL_PATH)


def upload(tmp_path: Path, content: str | bytes, fmt: str = "jsonl") -> DatasetSource:
    path = tmp_path / "corpus.txt"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return DatasetSource("upload", path, "“mine”", fmt)


def jsonl(*records: dict) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def learned_text(example, codec: Codec) -> str:
    return codec.decode(
        [token for token, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE]
    )


def test_only_the_completion_and_its_end_token_carry_loss(tmp_path, codec):
    records = [{"prompt": f"Question {i}: what is two plus two?", "completion": " Four."} for i in range(4)]
    dataset = build_dataset(upload(tmp_path, jsonl(*records)), codec, 64, seed=0)
    assert dataset.format == "prompt-completion"
    for example in dataset.train + dataset.validation:
        assert learned_text(example, codec) == " Four.<|im_end|>"
        prompt_length = example.labels.index(next(label for label in example.labels if label != IGNORE))
        assert codec.decode(example.input_ids[:prompt_length]).startswith("Question ")
        assert example.labels[prompt_length:] == example.input_ids[prompt_length:]


def test_chat_uses_the_models_template_and_only_assistant_turns_carry_loss(tmp_path, codec):
    from transformers import AutoTokenizer

    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Green."},
    ]
    dataset = build_dataset(upload(tmp_path, jsonl(*[{"messages": messages}] * 3)), codec, 256, seed=0)
    assert dataset.format == "chat"
    example = dataset.train[0]
    expected = AutoTokenizer.from_pretrained(settings.MODEL_PATH).apply_chat_template(messages, tokenize=False)
    assert codec.decode(example.input_ids) == expected
    assert learned_text(example, codec) == "Blue.<|im_end|>\nGreen.<|im_end|>\n"


def test_plain_text_is_cut_into_windows_that_all_carry_loss(tmp_path, codec):
    dataset = build_dataset(
        upload(tmp_path, "To be, or not to be, that is the question. " * 40, "text"), codec, 32, seed=0
    )
    assert dataset.format == "text" and dataset.truncated == 0
    windows = dataset.train + dataset.validation
    assert len(windows) > 5 and all(len(window.input_ids) <= 32 for window in windows)
    assert all(window.labels == window.input_ids for window in windows)


def test_the_built_in_datasets_build(codec):
    shakespeare = build_dataset(DatasetSource("shakespeare"), codec, 128, seed=0)
    qa = build_dataset(DatasetSource("course-qa"), codec, 128, seed=0)
    assert shakespeare.format == "text" and len(shakespeare.train) > 50
    assert qa.format == "chat" and 30 <= len(qa.train) + len(qa.validation) <= 60 and qa.truncated == 0


def test_the_validation_split_is_deterministic_and_never_empty(codec):
    examples = build_dataset(DatasetSource("course-qa"), codec, 128, seed=0).train
    assert [id(e) for e in split(examples, 3)[1]] == [id(e) for e in split(examples, 3)[1]]
    assert split(examples, 3)[1] != split(examples, 4)[1]
    train, validation = split(examples[:2], 0)
    assert len(train) == 1 and len(validation) == 1


def test_long_examples_are_cut_and_counted_and_those_left_without_loss_dropped(tmp_path, codec):
    records = [
        {"prompt": "short", "completion": " yes"},
        {"prompt": "short", "completion": " no"},
        {"prompt": "a long prompt " * 40, "completion": " never seen"},
        {"prompt": "short", "completion": " and a very long answer" * 20},
    ]
    dataset = build_dataset(upload(tmp_path, jsonl(*records)), codec, 32, seed=0)
    assert dataset.truncated == 2 and dataset.dropped == 1
    assert len(dataset.train) + len(dataset.validation) == 3


def test_the_preview_marks_what_carries_loss(tmp_path, codec):
    records = [{"prompt": "Q: hi?", "completion": " A: hello."}] * 3
    rows = preview_rows(build_dataset(upload(tmp_path, jsonl(*records)), codec, 64, seed=0), codec, 2)
    assert rows[0]["runs"] == [{"text": "Q: hi?", "loss": False}, {"text": " A: hello.<|im_end|>", "loss": True}]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (jsonl({"prompt": "a", "completion": "b"}) + "{not json\n", "Line 2 is not valid JSON"),
        ('["a list"]\n', "Line 1 is not a JSON object"),
        (jsonl({"prompt": "a", "completion": "b"}, {"prompt": "a"}), "Line 2 has no “completion”"),
        (jsonl({"question": "a", "answer": "b"}), "Line 1 has no “prompt” and no “completion”"),
        (jsonl({"prompt": "a", "completion": 3}), "Line 1: “completion” must be a string."),
        (jsonl({"messages": [{"role": "user", "content": "hi"}]}), "Line 1: there is no “assistant” message"),
        (jsonl({"messages": [{"role": "robot", "content": "hi"}]}), "Line 1: message 1 has role 'robot'"),
        (jsonl({"messages": "hello"}), "Line 1: “messages” must be a non-empty list"),
        ("\n\n  \n", "This dataset is empty"),
        (jsonl({"prompt": "a", "completion": "b"}), "This dataset has only one example"),
        (b"\x89PNG\x00\x00binary", "This looks like a binary file"),
        ("café".encode("latin-1"), "This file is not valid UTF-8 text (the first bad byte is number 4)"),
    ],
    ids=[
        "bad-json",
        "not-object",
        "missing-field",
        "wrong-fields",
        "wrong-type",
        "no-assistant",
        "bad-role",
        "messages-not-list",
        "empty",
        "one-example",
        "binary",
        "latin-1",
    ],  # fmt: skip
)
def test_bad_datasets_are_refused_with_a_message(tmp_path, codec, content, message):
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_dataset(upload(tmp_path, content), codec, 64, seed=0)


def test_a_dataset_over_the_token_limit_is_refused(tmp_path, codec, monkeypatch):
    monkeypatch.setattr("workers.training.lora.MAX_TRAINING_TOKENS", 500)
    with pytest.raises(DatasetError, match="This dataset is too large: .* tokens, the most is 500"):
        build_dataset(upload(tmp_path, "word " * 2000, "text"), codec, 64, seed=0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rank": 0}, "The rank must be between 1 and 64."),
        ({"rank": 65}, "The rank must be between 1 and 64."),
        ({"dropout": 0.6}, "The dropout must be between 0 and 0.5."),
        ({"learning_rate": 1.0}, "The learning rate must be between 1e-06 and 0.01."),
        ({"seq_len": 8}, "The sequence length must be between 16 and 1,024."),
        ({"batch_size": 33}, "The batch size must be between 1 and 32."),
        ({"target": "everything"}, "Unknown target modules 'everything'"),
    ],
)
def test_hyper_parameters_out_of_bounds_are_refused(changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        LoraHyperParameters(**changes)


def test_max_steps_wins_over_epochs():
    assert total_steps(10, LoraHyperParameters(max_steps=0, epochs=2, batch_size=4)) == 6
    assert total_steps(10, LoraHyperParameters(max_steps=7, epochs=2, batch_size=4)) == 7


def test_a_cpu_worker_refuses_qlora_and_says_why(tmp_path, codec):
    pytest.importorskip("torch")
    import torch

    from workers.training.lora import train_lora

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: QLoRA may run here")
    dataset = build_dataset(DatasetSource("shakespeare"), codec, 32, seed=0)
    with pytest.raises(DatasetError, match="this worker has no CUDA GPU, so it cannot train that way"):
        train_lora(settings.MODEL_PATH, dataset, LoraHyperParameters(qlora=True), tmp_path)
