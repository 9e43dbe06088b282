"""The HTTP API: OpenAI-style /v1/completions and /api/tokenize, with tokens and rate limits."""

from __future__ import annotations

import json

import pytest
import redis
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from lessons.models import ApiToken

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("model_server"),
]


@pytest.fixture
def key(owner, settings) -> str:
    # Rate-limit windows count per user id and minute: start every test from zero.
    client = redis.Redis.from_url(settings.REDIS_URL)
    for stale in client.scan_iter(match="course:ratelimit:*"):
        client.delete(stale)
    client.close()
    return ApiToken.issue(owner, "tests")[1]


async def post(path: str, body, key: str | None = None, raw: bytes | None = None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = raw if raw is not None else json.dumps(body)
    return await AsyncClient().post(path, data=data, content_type="application/json", headers=headers)


async def test_a_completion_in_the_openai_format(key):
    response = await post(
        "/v1/completions", {"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}, key
    )
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    [choice] = body["choices"]
    assert choice["text"].startswith(" Paris") and choice["finish_reason"] == "length" and choice["logprobs"] is None
    assert (
        body["usage"]["completion_tokens"] == 6 and body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 6
    )


async def test_stop_strings_and_seeds(key):
    stopped = (
        await post(
            "/v1/completions",
            {"prompt": "The capital of France is", "max_tokens": 10, "temperature": 0, "stop": ["."]},
            key,
        )
    ).json()
    assert stopped["choices"][0] == {"text": " Paris", "index": 0, "logprobs": None, "finish_reason": "stop"}
    seeded = {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 1.0, "seed": 3}
    first = (await post("/v1/completions", seeded, key)).json()["choices"][0]["text"]
    again = (await post("/v1/completions", seeded, key)).json()["choices"][0]["text"]
    assert first == again


async def test_logprobs_come_with_the_top_alternatives(key):
    body = (
        await post(
            "/v1/completions",
            {"prompt": "The capital of France is", "max_tokens": 3, "temperature": 0, "logprobs": 2},
            key,
        )
    ).json()
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs["tokens"][0] == " Paris"
    assert -0.35 < logprobs["token_logprobs"][0] < -0.2  # p ≈ 0.77
    assert len(logprobs["top_logprobs"]) == 3 and all(len(top) == 2 for top in logprobs["top_logprobs"])
    assert logprobs["text_offset"][0] == len("The capital of France is")


async def test_streaming_sends_server_sent_events_ending_in_done(key):
    response = await post(
        "/v1/completions",
        {"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "stream": True},
        key,
    )
    assert response["Content-Type"] == "text/event-stream"
    raw = b"".join([chunk async for chunk in response.streaming_content]).decode()
    events = [line[len("data: ") :] for line in raw.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    text = "".join(chunk["choices"][0]["text"] for chunk in chunks)
    assert text.startswith(" Paris")
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["usage"]["completion_tokens"] == 6


async def test_tokenize(key):
    body = (await post("/api/tokenize", {"text": "The cat sat on the"}, key)).json()
    assert body["count"] == 5 and [t["id"] for t in body["tokens"]] == [504, 2644, 2643, 335, 260]


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"prompt": "Hi", "temperature": -1}, "temperature", "between 0 and 5"),
        ({"prompt": "Hi", "top_p": 2}, "top_p", "between 0 and 1"),
        ({"prompt": "Hi", "top_k": 0}, "top_k", "between 1"),
        ({"prompt": "Hi", "max_tokens": 100000}, "max_tokens", "between 0 and 512"),
        ({"prompt": "Hi", "max_tokens": 0}, "max_tokens", "between 1 and 512"),
        ({"prompt": ""}, "prompt", "non-empty string"),
        ({"prompt": "Hi", "n": 3}, "n", "must be 1"),
        ({"prompt": "Hi", "logprobs": 9}, "logprobs", "0 to 5"),
        ({"prompt": "Hi", "echo": True}, "echo", "not supported"),
        ({"prompt": "Hi", "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 stop strings"),
    ],
)
async def test_bad_parameters_get_an_openai_style_error(key, body, param, message):
    response = await post("/v1/completions", body, key)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and message in error["message"]


async def test_bad_bodies(key):
    assert "not valid JSON" in (await post("/v1/completions", None, key, raw=b"{oops")).json()["error"]["message"]
    assert (
        "not valid UTF-8"
        in (await post("/v1/completions", None, key, raw=b'{"prompt": "\xff"}')).json()["error"]["message"]
    )
    too_long = {"prompt": "word " * 2400, "max_tokens": 10}
    response = await post("/v1/completions", too_long, key)
    assert response.status_code == 400 and "context" in response.json()["error"]["message"]


async def test_calls_without_a_valid_token_are_refused(owner):
    assert (await post("/v1/completions", {"prompt": "Hi"})).status_code == 401
    response = await post("/v1/completions", {"prompt": "Hi"}, "llmc_not-a-real-token")
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    token, key = await sync_to_async(ApiToken.issue)(owner, "revoked")
    await sync_to_async(token.revoke)()
    assert (await post("/api/tokenize", {"text": "x"}, key)).status_code == 401


async def test_the_rate_limit_answers_429(key, settings):
    settings.API_RATE_PER_MINUTE = 2
    codes = [(await post("/api/tokenize", {"text": "x"}, key)).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    response = await post("/api/tokenize", {"text": "x"}, key)
    assert response["Retry-After"] == "60" and response.json()["error"]["type"] == "rate_limit_exceeded"


async def test_no_model_server_means_503(key, settings):
    settings.REDIS_URL = settings.REDIS_URL.rsplit("/", 1)[0] + "/15"
    response = await post("/v1/completions", {"prompt": "Hi"}, key)
    assert response.status_code == 503 and "not running" in response.json()["error"]["message"]
