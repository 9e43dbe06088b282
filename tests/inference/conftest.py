from __future__ import annotations

import pytest
from django.conf import settings

from workers.inference.loading import load_model, tiny_model
from workers.inference.tokenizer import load_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(settings.MODEL_PATH)


@pytest.fixture(scope="session")
def tiny(tokenizer):
    """(model, tokenizer): a 2-layer random Llama with the course vocabulary. Fast."""
    return tiny_model(tokenizer.get_vocab_size()), tokenizer


@pytest.fixture(scope="session")
def real():
    """(model, tokenizer): the course model itself, on the CPU."""
    return load_model(settings.MODEL_PATH, "cpu")


@pytest.fixture(scope="session")
def real_bf16():
    """(model, tokenizer): the course model in bfloat16, as the model server runs it on CPUs
    with native bfloat16 (MODEL_DTYPE=auto)."""
    return load_model(settings.MODEL_PATH, "cpu", "bfloat16")


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def run(engine, requests) -> tuple[dict[str, list[int]], dict[str, list]]:
    """Submits the requests and steps until idle: (generated ids, events) per request."""
    tokens: dict[str, list[int]] = {r.id: [] for r in requests}
    events: dict[str, list] = {r.id: [] for r in requests}
    for request in requests:
        for event in engine.submit(request):
            events[event.request_id].append(event)
    while engine.has_work():
        for event in engine.step():
            events[event.request_id].append(event)
            if event.kind == "token":
                tokens[event.request_id].append(event.data["id"])
    return tokens, events


def last(events, kind):
    return [event for event in events if event.kind == kind][-1]
