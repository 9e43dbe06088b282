"""Continuous batching: many learners' requests share every forward pass of one model.

Plain Python, no Django, no networking: `Engine.submit()` queues a request, `Engine.step()`
does one round of work and returns what happened as events, `Engine.cancel()` drops a request.
The model server (workers/inference/server.py) feeds it from the channel layer.

Each step:
1. drops cancelled rows and rows past their deadline;
2. admits queued requests while there is a free row (cap: `max_rows`);
3. gives rows that are still reading their prompt one chunk of it (at most `prefill_chunk`
   tokens per step in all, so a long prompt cannot stall everyone else);
4. decodes one token for every row that has read its prompt;
5. samples per row (its own temperature, top-k, top-p and seeded generator), reports
   candidates, checks stop strings, end of text, max tokens; finished rows leave.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from workers.inference.runner import LlamaRunner, Segment
from workers.inference.sampling import BadRequest, SamplingParams, adjusted_probs, pick, top


@dataclass
class Request:
    id: str
    prompt_ids: list[int]
    params: SamplingParams
    owner: str = ""
    deadline: float = math.inf  # time.monotonic() after which the request is ended
    # "generate": sample up to max_tokens; "score": report the probability and rank of each
    # token of `continuation_ids` after the prompt (and generate nothing).
    mode: str = "generate"
    continuation_ids: list[int] = field(default_factory=list)
    adapter: Any = None  # a LoraAdapter (workers/inference/adapters.py), or None for the base model


@dataclass
class Event:
    kind: str  # queued, started, token, candidates, scored, done, error
    request_id: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Row:
    request: Request
    slot: int
    tokens: list[int]  # everything to read: prompt (+ continuation when scoring)
    done_reading: int = 0  # how many of `tokens` are in the cache
    generated: list[int] = field(default_factory=list)
    text: str = ""
    generator: torch.Generator | None = None
    started_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    score_logits: list[torch.Tensor] = field(default_factory=list)  # scoring rows, chunk by chunk

    @property
    def reading(self) -> bool:
        return self.done_reading < len(self.tokens)


class Engine:
    def __init__(
        self,
        model,
        tokenizer,
        max_rows: int = 16,
        max_context: int = 2048,
        prefill_chunk: int = 64,
        max_queue: int = 256,
    ) -> None:
        self.runner = LlamaRunner(model, max_slots=max_rows, max_context=max_context)
        self.tokenizer = tokenizer  # a `tokenizers.Tokenizer`
        self.max_rows = max_rows
        self.max_context = max_context
        self.prefill_chunk = prefill_chunk
        self.max_queue = max_queue
        self.eos_ids = _eos_ids(model.config)
        self.queue: deque[Request] = deque()
        self.rows: list[_Row] = []  # rows[i].slot == i: active rows stay packed at the front
        self._cancelled: set[str] = set()

    # --- what the server calls -------------------------------------------------------------------

    def submit(self, request: Request) -> list[Event]:
        """Queues a request; returns its `queued` event, or an `error` event if it is refused."""
        total = len(request.prompt_ids) + len(request.continuation_ids)
        if not request.prompt_ids:
            return [Event("error", request.id, {"error": "the prompt is empty"})]
        if request.mode == "generate":
            total += request.params.max_tokens
        if total > self.max_context:
            error = (
                f"the prompt and max_tokens need {total} tokens, more than the model's context of "
                f"{self.max_context}: shorten the prompt or ask for fewer tokens"
            )
            return [Event("error", request.id, {"error": error})]
        if len(self.queue) >= self.max_queue:
            return [Event("error", request.id, {"error": "the model is very busy: try again in a minute"})]
        self.queue.append(request)
        return [Event("queued", request.id, {"position": len(self.queue)})]

    def cancel(self, request_id: str) -> list[Event]:
        """Removes a queued request at once; a running row is freed at the start of the next step."""
        for request in self.queue:
            if request.id == request_id:
                self.queue.remove(request)
                return [Event("done", request_id, {"reason": "cancelled"}), *self._positions()]
        if any(row.request.id == request_id for row in self.rows):
            self._cancelled.add(request_id)
        return []

    def has_work(self) -> bool:
        return bool(self.rows or self.queue)

    def queue_position(self, request_id: str) -> int | None:
        for position, request in enumerate(self.queue, start=1):
            if request.id == request_id:
                return position
        return None

    def step(self) -> list[Event]:
        events: list[Event] = []
        now = time.monotonic()
        for row in list(self.rows):
            if row.request.id in self._cancelled:
                events += self._finish(row, "cancelled")
            elif now > row.request.deadline:
                events += self._finish(row, "deadline")
        self._cancelled.clear()
        for request in [r for r in self.queue if now > r.deadline]:
            self.queue.remove(request)
            events.append(Event("done", request.id, {"reason": "deadline"}))

        admitted = False
        while self.queue and len(self.rows) < self.max_rows:
            request = self.queue.popleft()
            row = _Row(request, slot=len(self.rows), tokens=request.prompt_ids + request.continuation_ids)
            if request.params.seed is not None:
                row.generator = torch.Generator().manual_seed(request.params.seed)
            self.rows.append(row)
            events.append(Event("started", request.id))
            admitted = True
        if admitted:
            events += self._positions()
        if not self.rows:
            return events

        segments, owners = self._plan()
        outputs = self.runner.forward(segments)
        for row, segment, logits in zip(owners, segments, outputs, strict=True):
            row.done_reading = max(row.done_reading, segment.start + len(segment.tokens))
            if segment.all_logits:
                row.score_logits.append(logits)
            if row.reading:
                continue
            if row.request.mode == "score":
                events += self._score(row, torch.cat(row.score_logits))
                events += self._finish(row, "scored")
            else:
                events += self._advance(row, logits[-1])
        return events

    # --- inside a step --------------------------------------------------------------------------

    def _plan(self) -> tuple[list[Segment], list[_Row]]:
        segments, owners = [], []
        budget = self.prefill_chunk
        for row in self.rows:
            if row.reading:
                if budget <= 0:
                    continue
                start = row.done_reading
                # A scored row needs logits from the last prompt token on.
                chunk = row.tokens[start : start + budget]
                budget -= len(chunk)
                score_from = len(row.request.prompt_ids) - 1
                all_logits = row.request.mode == "score" and start + len(chunk) > score_from
                segments.append(Segment(row.slot, start, chunk, all_logits, row.request.adapter))
            else:
                position = len(row.tokens) + len(row.generated) - 1
                segments.append(Segment(row.slot, position, [row.generated[-1]], adapter=row.request.adapter))
            owners.append(row)
        return segments, owners

    def _advance(self, row: _Row, logits: torch.Tensor) -> list[Event]:
        params = row.request.params
        events = []
        probs = adjusted_probs(logits, params)
        raw = None
        if params.candidates:
            raw = torch.softmax(logits, dim=-1)
            events.append(
                Event(
                    "candidates",
                    row.request.id,
                    {
                        "position": len(row.generated),
                        "raw": self._described(top(raw, params.candidates)),
                        "adjusted": self._described(top(probs, params.candidates)),
                    },
                )
            )
        if len(row.generated) >= params.max_tokens:
            return events + self._finish(row, "length")

        token = int(torch.argmax(probs)) if params.greedy else pick(probs, row.generator)
        if row.first_token_at is None:
            row.first_token_at = time.monotonic()
        row.generated.append(token)
        if token in self.eos_ids:
            return events + self._finish(row, "end")
        text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
        stop_at = _first_stop(text, params.stop)
        if stop_at is not None:
            text = text[:stop_at]
        # A token that ends inside a multi-byte character decodes to U+FFFD for now: hold it back.
        delta = text[len(row.text) :]
        if delta and not delta.endswith("\ufffd"):
            row.text = text
            data = {"id": token, "text": delta, "p": float(probs[token])}
            if raw is not None:  # the model's own log-probability, before the sampler's knobs
                data["logprob"] = math.log(max(float(raw[token]), 1e-45))
            events.append(Event("token", row.request.id, data))
        if stop_at is not None:
            return events + self._finish(row, "stop")
        if len(row.generated) >= params.max_tokens and not params.candidates:
            return events + self._finish(row, "length")
        return events

    def _score(self, row: _Row, logits: torch.Tensor) -> list[Event]:
        """Probability and rank of each continuation token; `logits` start at the last prompt token."""
        continuation = row.request.continuation_ids
        logits = logits[-(len(continuation) + 1) : -1] if continuation else logits[:0]
        steps, total = [], 0.0
        log_probs = torch.log_softmax(logits, dim=-1)
        for position, token in enumerate(continuation):
            row_log_probs = log_probs[position]
            value = float(row_log_probs[token])
            rank = int((row_log_probs > row_log_probs[token]).sum()) + 1
            best = int(torch.argmax(row_log_probs))
            steps.append(
                {
                    "id": token,
                    "text": self.tokenizer.decode([token]),
                    "p": math.exp(value),
                    "rank": rank,
                    "best": {
                        "id": best,
                        "text": self.tokenizer.decode([best]),
                        "p": math.exp(float(row_log_probs[best])),
                    },
                }
            )
            total += value
        n = len(continuation)
        perplexity = math.exp(-total / n) if n else None
        return [Event("scored", row.request.id, {"steps": steps, "logprob": total, "perplexity": perplexity})]

    def _finish(self, row: _Row, reason: str) -> list[Event]:
        elapsed = time.monotonic() - row.started_at
        usage = {
            "prompt_tokens": len(row.request.prompt_ids),
            "completion_tokens": len(row.generated),
            "seconds": round(elapsed, 4),
            "time_to_first_token": round(row.first_token_at - row.started_at, 4) if row.first_token_at else None,
        }
        # Keep the rows packed at the front: the last row takes the freed slot.
        index = self.rows.index(row)
        last = self.rows.pop()
        if last is not row:
            self.runner.move_slot(last.slot, row.slot, len(last.tokens) + len(last.generated))
            last.slot = row.slot
            self.rows[index] = last
        return [Event("done", row.request.id, {"reason": reason, "text": row.text, "usage": usage})]

    def _positions(self) -> list[Event]:
        return [Event("queued", r.id, {"position": p}) for p, r in enumerate(self.queue, start=1)]

    def _described(self, pairs: list[tuple[int, float]]) -> list[dict[str, Any]]:
        return [{"id": i, "text": self.tokenizer.decode([i]), "p": p} for i, p in pairs]


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [text.find(stop) for stop in stops if stop in text]
    return min(found) if found else None


def _eos_ids(config) -> set[int]:
    eos = config.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, list) else {eos}


__all__ = ["BadRequest", "Engine", "Event", "Request", "SamplingParams"]
