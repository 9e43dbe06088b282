"""The OpenAI Python client talks to /v1/completions on a real server, as the serving lesson shows."""

from __future__ import annotations

import pytest
from openai import OpenAI

pytestmark = [pytest.mark.sqlite_only, pytest.mark.usefixtures("model_server")]


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    key = server.manage("api_token", "client-test", "--create-user").strip()
    return OpenAI(base_url=f"{server}/v1", api_key=key, max_retries=0)


def test_a_completion(client):
    completion = client.completions.create(
        model="smollm2-135m-instruct", prompt="The capital of France is", max_tokens=5, temperature=0
    )
    assert completion.choices[0].text.startswith(" Paris")
    assert completion.usage.completion_tokens == 5


def test_a_streamed_completion(client):
    stream = client.completions.create(
        model="smollm2-135m-instruct", prompt="The capital of France is", max_tokens=5, temperature=0, stream=True
    )
    pieces = [chunk.choices[0].text for chunk in stream]
    assert "".join(pieces).startswith(" Paris") and len(pieces) >= 2


def test_a_bad_key_raises_the_clients_authentication_error(server):
    import openai

    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{server}/v1", api_key="llmc_wrong", max_retries=0).completions.create(
            model="x", prompt="Hi", max_tokens=1
        )
