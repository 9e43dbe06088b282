"""The continuous-batching engine: batching changes nothing but speed; cancel, queue, stops, deadlines."""

from __future__ import annotations

import math
import time

import pytest

from tests.inference.conftest import ids, last, run
from workers.inference.engine import Engine, Request
from workers.inference.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=12)
PROMPTS = ["The capital of France is", "Once upon a time", "def add(a, b):", "The cat sat on the"]


def alone(model, tokenizer, prompt, params) -> list[int]:
    tokens, _ = run(Engine(model, tokenizer, max_rows=1), [Request("x", ids(tokenizer, prompt), params)])
    return tokens["x"]


@pytest.mark.parametrize("which", ["tiny", "real", "real_bf16"])
def test_batched_greedy_output_equals_single_requests_token_for_token(request, which):
    model, tokenizer = request.getfixturevalue(which)
    expected = {str(i): alone(model, tokenizer, p, GREEDY) for i, p in enumerate(PROMPTS)}
    # A small prefill budget makes prompts arrive in chunks while other rows decode.
    engine = Engine(model, tokenizer, max_rows=4, prefill_chunk=3)
    tokens, _ = run(engine, [Request(str(i), ids(tokenizer, p), GREEDY) for i, p in enumerate(PROMPTS)])
    assert tokens == expected
    assert all(len(t) == 12 for t in tokens.values())


def test_requests_that_join_mid_stream_get_the_same_tokens(tiny):
    model, tokenizer = tiny
    engine = Engine(model, tokenizer, max_rows=4)
    first = Request("first", ids(tokenizer, PROMPTS[0]), GREEDY)
    engine.submit(first)
    got = {"first": [], "late": []}
    for step in range(20):
        if step == 5:
            engine.submit(Request("late", ids(tokenizer, PROMPTS[1]), GREEDY))
        for event in engine.step():
            if event.kind == "token":
                got[event.request_id].append(event.data["id"])
    assert got["first"] == alone(model, tokenizer, PROMPTS[0], GREEDY)
    assert got["late"] == alone(model, tokenizer, PROMPTS[1], GREEDY)


def test_seeded_sampling_reproduces_whatever_else_is_in_the_batch(tiny):
    model, tokenizer = tiny
    seeded = SamplingParams(temperature=1.2, top_p=0.95, seed=7, max_tokens=10)
    solo, _ = run(Engine(model, tokenizer), [Request("a", ids(tokenizer, "Hello"), seeded)])
    noisy = SamplingParams(temperature=1.5, max_tokens=10)
    crowd, _ = run(
        Engine(model, tokenizer),
        [Request("n1", ids(tokenizer, "Noise"), noisy), Request("a", ids(tokenizer, "Hello"), seeded)],
    )
    other_seed, _ = run(
        Engine(model, tokenizer),
        [Request("a", ids(tokenizer, "Hello"), SamplingParams(temperature=1.2, top_p=0.95, seed=8, max_tokens=10))],
    )
    assert solo["a"] == crowd["a"]
    assert solo["a"] != other_seed["a"]


def test_cancelling_a_running_request_frees_its_row_at_the_next_step(tiny):
    model, tokenizer = tiny
    engine = Engine(model, tokenizer, max_rows=2)
    long = SamplingParams(temperature=0, max_tokens=200)
    engine.submit(Request("a", ids(tokenizer, "One"), long))
    engine.submit(Request("b", ids(tokenizer, "Two"), long))
    for _ in range(3):
        engine.step()
    assert [row.request.id for row in engine.rows] == ["a", "b"]
    engine.cancel("a")
    events = engine.step()
    assert any(e.kind == "done" and e.request_id == "a" and e.data["reason"] == "cancelled" for e in events)
    assert [row.request.id for row in engine.rows] == ["b"]
    assert engine.rows[0].slot == 0  # b moved into the freed slot


def test_cancelled_rows_leave_the_survivors_tokens_unchanged(real):
    model, tokenizer = real
    engine = Engine(model, tokenizer, max_rows=3)
    for name, prompt in zip("abc", PROMPTS, strict=False):
        engine.submit(Request(name, ids(tokenizer, prompt), GREEDY))
    got = []
    for step in range(30):
        if step == 4:
            engine.cancel("a")  # c's cache moves into a's slot
        got += [e.data["id"] for e in engine.step() if e.kind == "token" and e.request_id == "c"]
    assert got == alone(model, tokenizer, PROMPTS[2], GREEDY)


def test_waiting_requests_see_their_queue_position_and_leave_the_queue_when_cancelled(tiny):
    model, tokenizer = tiny
    engine = Engine(model, tokenizer, max_rows=1)
    long = SamplingParams(temperature=0, max_tokens=50)
    engine.submit(Request("running", ids(tokenizer, "A"), long))
    engine.step()
    assert engine.submit(Request("w1", ids(tokenizer, "B"), long))[0].data == {"position": 1}
    assert engine.submit(Request("w2", ids(tokenizer, "C"), long))[0].data == {"position": 2}
    events = engine.cancel("w1")
    assert events[0].kind == "done" and events[0].data["reason"] == "cancelled"
    assert [(e.request_id, e.data["position"]) for e in events[1:]] == [("w2", 1)]
    assert engine.queue_position("w2") == 1


def test_stop_strings_end_the_text_before_the_stop(real):
    model, tokenizer = real
    free = alone(model, tokenizer, "The capital of France is", SamplingParams(temperature=0, max_tokens=8))
    text = tokenizer.decode(free)
    assert "." in text  # " Paris.\n\nThe..."
    engine = Engine(model, tokenizer)
    _, events = run(
        engine,
        [
            Request(
                "s",
                ids(tokenizer, "The capital of France is"),
                SamplingParams(temperature=0, max_tokens=8, stop=(".",)),
            )
        ],
    )
    done = last(events["s"], "done")
    assert done.data["reason"] == "stop"
    assert done.data["text"] == text[: text.index(".")]
    assert "".join(e.data["text"] for e in events["s"] if e.kind == "token") == done.data["text"]


def test_a_request_past_its_deadline_is_ended(tiny):
    model, tokenizer = tiny
    engine = Engine(model, tokenizer)
    engine.submit(Request("slow", ids(tokenizer, "A"), SamplingParams(max_tokens=500), deadline=time.monotonic() + 0.2))
    engine.step()
    time.sleep(0.25)
    events = engine.step()
    assert [(e.kind, e.data["reason"]) for e in events if e.kind == "done"] == [("done", "deadline")]
    assert not engine.has_work()


def test_max_tokens_and_the_context_limit(tiny):
    model, tokenizer = tiny
    engine = Engine(model, tokenizer, max_context=64)
    tokens, events = run(engine, [Request("m", ids(tokenizer, "Hi"), SamplingParams(temperature=0, max_tokens=5))])
    assert len(tokens["m"]) == 5 or last(events["m"], "done").data["reason"] == "end"
    [error] = engine.submit(Request("big", list(range(60)), SamplingParams(max_tokens=10)))
    assert error.kind == "error" and "more than the model's context of 64" in error.data["error"]
    [error] = engine.submit(Request("empty", [], SamplingParams()))
    assert error.kind == "error" and "empty" in error.data["error"]


def test_candidates_report_raw_and_adjusted_probabilities(real):
    model, tokenizer = real
    params = SamplingParams(temperature=0.7, top_k=3, max_tokens=0, candidates=5)
    _, events = run(Engine(model, tokenizer), [Request("c", ids(tokenizer, "The capital of France is"), params)])
    candidates = last(events["c"], "candidates").data
    raw, adjusted = candidates["raw"], candidates["adjusted"]
    assert raw[0]["text"] == " Paris" and 0.7 < raw[0]["p"] < 0.85
    assert len(raw) == 5 and len(adjusted) == 3  # top-k 3 leaves three tokens
    assert adjusted[0]["p"] > raw[0]["p"]  # a low temperature sharpens the favourite
    assert abs(sum(c["p"] for c in adjusted) - 1) < 1e-4


def test_scoring_reports_each_tokens_rank_and_the_perplexity(real):
    model, tokenizer = real
    continuation = ids(tokenizer, " Paris. It is")
    engine = Engine(model, tokenizer, prefill_chunk=4)  # the prompt arrives in several chunks
    _, events = run(
        engine,
        [
            Request(
                "s",
                ids(tokenizer, "The capital of France is"),
                SamplingParams(),
                mode="score",
                continuation_ids=continuation,
            )
        ],
    )
    scored = last(events["s"], "scored").data
    assert [step["id"] for step in scored["steps"]] == continuation
    assert scored["steps"][0]["rank"] == 1 and scored["steps"][0]["text"] == " Paris"
    total = sum(math.log(step["p"]) for step in scored["steps"])
    assert abs(total - scored["logprob"]) < 1e-6
    assert scored["perplexity"] == pytest.approx(math.exp(-total / len(continuation)))
