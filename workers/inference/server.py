"""The model server: one process that owns the model and serves every learner.

It reads requests from the channel layer, feeds them to the batching Engine, and sends each
request's events back to the web process that asked. The engine's steps run in a thread, so the
event loop keeps receiving requests and cancels while the model computes.

"inspect" requests (a short prompt's attention and logit lens) do not generate, so they skip
the engine: each is one plain forward pass of the model, run between two engine steps.

A request that names a LoRA adapter gets it loaded (in a thread, between two steps) the first
time; the adapters stay in an LRU cache, and rows using different adapters share each step.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.inference.adapters import AdapterCache, AdapterError, load_adapter
from workers.inference.engine import Engine, Event, Request
from workers.inference.inspect import inspect_prompt
from workers.inference.protocol import MODES, REQUEST_CHANNEL, SERVERS_GROUP, announce, live_servers, redis_client
from workers.inference.sampling import BadRequest, SamplingParams

log = logging.getLogger("workers.model_server")

# Token frames are sent at most this often per request: one channel message per token would
# cost more than the token on a fast device.
FRAME_INTERVAL = 0.04
MAX_PROMPT_CHARS = 20_000
# How long a server's claim on a request id lasts: far longer than a second delivery can take.
CLAIM_SECONDS = 600
# A server with every row busy, while another server has a free one, waits this long before it
# takes another request from the shared channel: Redis hands a message to the reader that has
# waited longest, so the idle server (already waiting) gets it first. With no idle server the
# busy one takes it at once and queues it.
BUSY_PATIENCE_SECONDS = 0.2
# Inspections waiting for their turn: each takes a fraction of a second, so this many is a few
# seconds of waiting; past it the learner is told the model is busy.
MAX_INSPECTIONS = 32


@dataclass
class _Pending:
    reply_channel: str
    owner: str
    text: str = ""
    tokens: list[dict[str, Any]] = field(default_factory=list)
    last_sent: float = 0.0


@dataclass
class _Inspection:
    request_id: str
    prompt_ids: list[int]
    layer: int
    head: int
    deadline: float


class ModelServer:
    def __init__(
        self, engine: Engine, layer, redis_url: str, chat_template=None, model_name: str = "", max_adapters: int = 32
    ) -> None:
        self.engine = engine
        self.adapters = AdapterCache(max_adapters)
        # Requests whose adapter could not be loaded: request id -> the reason, for the learner.
        self.adapter_errors: dict[str, str] = {}
        self.layer = layer
        self.redis_url = redis_url
        self.chat_template = chat_template  # callable(prompt) -> text, or None
        self.model_name = model_name
        self.server_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.pending: dict[str, _Pending] = {}
        self.by_owner: dict[str, str] = {}
        self.inbox: list[dict[str, Any]] = []
        self.inspections: deque[_Inspection] = deque()
        self.wakeup = asyncio.Event()
        self.stopping = False
        # Cancels that arrived before their request (it was still in the shared channel).
        self.early_cancels: dict[str, float] = {}

    async def run(self) -> None:
        self.own_channel = await self.layer.new_channel("model-server.")
        # Connect the claiming client now: a cold first claim (a new connection) loses the race
        # for a request to a warm server and, at startup, would leave this one idle.
        await redis_client(self.redis_url).ping()
        await self.layer.group_add(SERVERS_GROUP, self.own_channel)
        tasks = [
            asyncio.create_task(self._receive_requests()),
            asyncio.create_task(self._receive_cancels()),
            asyncio.create_task(self._announce()),
            asyncio.create_task(self._work()),
        ]
        log.info("model server %s ready on %s", self.server_id, REQUEST_CHANNEL)
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await self.layer.group_discard(SERVERS_GROUP, self.own_channel)

    # --- receiving ---------------------------------------------------------------------------------

    async def _receive_requests(self) -> None:
        while not self.stopping:
            # Take a request only when there is room to run or queue it here, so that with
            # several servers the waiting requests stay in the shared channel for whoever frees up.
            if len(self.engine.queue) >= self.engine.max_queue:
                await asyncio.sleep(0.05)
                continue
            if self._busy() and await self._idle_peer():
                await asyncio.sleep(BUSY_PATIENCE_SECONDS)
            message = await self.layer.receive(REQUEST_CHANNEL)
            if await self._claim(message):
                self.inbox.append(message)
                self.wakeup.set()

    def _busy(self) -> bool:
        waiting = len(self.engine.queue) + len(self.inbox)
        return len(self.engine.rows) + waiting >= self.engine.max_rows

    async def _idle_peer(self) -> bool:
        """Whether another model server said, at its last announcement, that it had a free row.
        Only then is it worth holding back: alone, a busy server takes the next request at once."""
        try:
            servers = await live_servers(self.redis_url)
        except Exception:  # the claim and the receive will report a Redis that is gone
            return False
        return any(
            server.get("id") != self.server_id
            and server.get("rows", 0) + server.get("queued", 0) < server.get("max_rows", 0)
            for server in servers
        )

    async def _claim(self, message: dict[str, Any]) -> bool:
        """True for the first server to take this request; False for a second delivery of it.

        channels-redis keeps one in-flight backup list per channel name, shared by every process
        reading that channel, and each reader puts that whole list back in the queue before it
        pops. With several servers on `model.requests`, a request another server has just taken
        can be delivered again; run twice, it would send the learner two streams at once.
        """
        request_id = str(message.get("request_id", ""))
        if message.get("type") != "model.request" or not request_id:
            return True  # _admit refuses it with a message
        key = f"course:model-request:{request_id}"
        return bool(await redis_client(self.redis_url).set(key, self.server_id, nx=True, ex=CLAIM_SECONDS))

    async def _receive_cancels(self) -> None:
        while not self.stopping:
            message = await self.layer.receive(self.own_channel)
            if message.get("type") == "model.cancel":
                self.inbox.append(message)
                self.wakeup.set()

    async def _announce(self) -> None:
        import redis.asyncio as aioredis

        client = aioredis.from_url(self.redis_url)
        try:
            while not self.stopping:
                info = {
                    "model": self.model_name,
                    "rows": len(self.engine.rows),
                    "max_rows": self.engine.max_rows,
                    "queued": len(self.engine.queue),
                    "device": str(self.engine.runner.device),
                }
                await announce(client, self.server_id, info)
                await asyncio.sleep(2)
        finally:
            await client.aclose()

    # --- working ------------------------------------------------------------------------------------

    async def _work(self) -> None:
        # A step's replies go out while the next step computes: sending them is Redis round
        # trips, which would otherwise add to every step. `replying` is that previous step's
        # sending; it is awaited before anything else is sent, so replies keep their order.
        replying: asyncio.Task | None = None
        try:
            while not self.stopping:
                await self._load_adapters()
                events = self._take_inbox()
                if self.inspections:
                    # One inspection per round, between two engine steps: both use the model but
                    # never at once, and running generations wait for at most one short forward.
                    replying = await self._replied(replying, events)
                    events = await self._inspect(self.inspections.popleft())
                if self.engine.has_work():
                    stepping = asyncio.create_task(asyncio.to_thread(self.engine.step))
                    replying = await self._replied(replying, events)
                    replying = asyncio.create_task(self._dispatch(await stepping))
                elif not self.inspections:
                    replying = await self._replied(replying, events)
                    await self._flush_all()
                    self.wakeup.clear()
                    if not self.inbox:
                        await self.wakeup.wait()
                else:
                    replying = await self._replied(replying, events)
        finally:
            if replying is not None:
                replying.cancel()

    async def _replied(self, replying: asyncio.Task | None, events: list[Event]) -> None:
        """Waits for the previous step's replies to be sent, then sends `events`."""
        if replying is not None:
            await replying
        await self._dispatch(events)

    async def _load_adapters(self) -> None:
        """Loads the adapters that the requests in the inbox name and the cache lacks."""
        wanted = {}
        for message in self.inbox:
            adapter = message.get("adapter") if message.get("type") == "model.request" else None
            if isinstance(adapter, dict) and self.adapters.get(str(adapter.get("key"))) is None:
                wanted.setdefault(str(adapter.get("key")), (str(adapter.get("path", "")), []))
                wanted[str(adapter.get("key"))][1].append(str(message.get("request_id", "")))
        for key, (path, request_ids) in wanted.items():
            try:
                adapter = await asyncio.to_thread(load_adapter, key, Path(path), self.engine.runner)
            except AdapterError as exc:
                reason = f"Your adapter could not be loaded: {exc}."
            except Exception:
                log.exception("adapter %s at %s failed to load", key, path)
                reason = "Your adapter could not be loaded: the model server logged the problem."
            else:
                self.adapters.put(key, adapter, self._adapters_in_use())
                log.info("loaded adapter %s (%s parameters)", key, f"{adapter.parameters:,}")
                continue
            for request_id in request_ids:
                self.adapter_errors[request_id] = reason

    def _adapters_in_use(self) -> set[str]:
        requests = [row.request for row in self.engine.rows] + list(self.engine.queue)
        return {request.adapter.name for request in requests if request.adapter is not None}

    def _take_inbox(self) -> list[Event]:
        events: list[Event] = []
        now = time.monotonic()
        self.early_cancels = {k: v for k, v in self.early_cancels.items() if v > now}
        messages, self.inbox = self.inbox, []
        for message in messages:
            request_id = str(message.get("request_id", ""))
            if message.get("type") == "model.cancel":
                if request_id in self.pending:
                    events += self._cancel_inspection(request_id) or self.engine.cancel(request_id)
                else:
                    self.early_cancels[request_id] = now + 120
                continue
            if request_id in self.early_cancels:
                self.adapter_errors.pop(request_id, None)
                continue
            if self._adapter_pending(message, request_id):
                self.inbox.append(message)  # it came in while adapters were loading: next round
                continue
            events += self._admit(message, request_id)
        return events

    def _adapter_pending(self, message: dict[str, Any], request_id: str) -> bool:
        adapter = message.get("adapter")
        if not isinstance(adapter, dict) or request_id in self.adapter_errors:
            return False
        return self.adapters.get(str(adapter.get("key"))) is None

    def _admit(self, message: dict[str, Any], request_id: str) -> list[Event]:
        reply_channel = message.get("reply_channel")
        if not request_id or not reply_channel:
            log.warning("dropped a malformed request: %r", {k: message.get(k) for k in ("request_id", "reply_channel")})
            return []
        owner = str(message.get("owner", ""))
        self.pending[request_id] = _Pending(reply_channel, owner)
        try:
            request = self._build(message, request_id, owner)
            if request.mode == "inspect":
                # Not a generation: it neither waits in the engine's queue nor replaces the
                # learner's running generation.
                return self._queue_inspection(request, message)
        except BadRequest as exc:
            return [Event("error", request_id, {"error": str(exc)})]
        events = []
        # One generation at a time per learner: a new request replaces the one still running.
        previous = self.by_owner.get(owner) if owner else None
        if previous and previous in self.pending:
            events += self.engine.cancel(previous)
        if owner:
            self.by_owner[owner] = request_id
        return events + self.engine.submit(request)

    def _build(self, message: dict[str, Any], request_id: str, owner: str) -> Request:
        mode = message.get("mode", "generate")
        if mode not in MODES:
            raise BadRequest(f"unknown mode {mode!r}")
        params = SamplingParams.from_dict(message.get("params") or {})
        prompt_ids = [int(i) for i in message.get("prompt_ids") or []]
        continuation_ids = [int(i) for i in message.get("continuation_ids") or []]
        vocab = self.engine.runner.config.vocab_size
        if any(not 0 <= i < vocab for i in prompt_ids + continuation_ids):
            raise BadRequest(f"token ids must be between 0 and {vocab - 1}")
        prompt = message.get("prompt") or ""
        if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
            raise BadRequest(f"the prompt must be text of at most {MAX_PROMPT_CHARS:,} characters")
        if prompt:
            if message.get("chat") and self.chat_template:
                prompt = self.chat_template(prompt)
            prompt_ids = self.engine.tokenizer.encode(prompt, add_special_tokens=False).ids + prompt_ids
        timeout = float(message.get("timeout") or 120)
        deadline = time.monotonic() + timeout if math.isfinite(timeout) and timeout > 0 else math.inf
        request = Request(request_id, prompt_ids, params, owner, deadline, mode, continuation_ids)
        if message.get("adapter"):
            if mode == "inspect":
                raise BadRequest("looking inside the model works on the base model only")
            key = str(message["adapter"].get("key")) if isinstance(message["adapter"], dict) else ""
            request.adapter = self.adapters.get(key)
            if request.adapter is None:
                raise BadRequest(self.adapter_errors.pop(request_id, "Your adapter could not be loaded."))
        return request

    # --- inspecting ----------------------------------------------------------------------------------

    def _queue_inspection(self, request: Request, message: dict[str, Any]) -> list[Event]:
        try:
            layer, head = int(message.get("layer") or 0), int(message.get("head") or 0)
        except (TypeError, ValueError):
            raise BadRequest("layer and head must be whole numbers") from None
        if len(self.inspections) >= MAX_INSPECTIONS:
            raise BadRequest("the model is very busy: try again in a minute")
        self.inspections.append(_Inspection(request.id, request.prompt_ids, layer, head, request.deadline))
        return []

    def _cancel_inspection(self, request_id: str) -> list[Event]:
        for job in self.inspections:
            if job.request_id == request_id:
                self.inspections.remove(job)
                return [Event("done", request_id, {"reason": "cancelled"})]
        return []

    async def _inspect(self, job: _Inspection) -> list[Event]:
        started = time.monotonic()
        if started > job.deadline:
            return [Event("done", job.request_id, {"reason": "deadline"})]
        model, tokenizer = self.engine.runner.model, self.engine.tokenizer
        try:
            result = await asyncio.to_thread(inspect_prompt, model, tokenizer, job.prompt_ids, job.layer, job.head)
        except BadRequest as exc:
            return [Event("error", job.request_id, {"error": str(exc)})]
        except Exception:  # one prompt that breaks the forward pass must not stop the server
            log.exception("inspection %s failed", job.request_id)
            return [Event("error", job.request_id, {"error": "the model could not look inside this prompt"})]
        usage = {"prompt_tokens": len(job.prompt_ids), "completion_tokens": 0}
        usage["seconds"] = round(time.monotonic() - started, 4)
        return [
            Event("inspected", job.request_id, result.as_dict()),
            Event("done", job.request_id, {"reason": "inspected", "usage": usage}),
        ]

    # --- replying -----------------------------------------------------------------------------------

    async def _dispatch(self, events: list[Event]) -> None:
        """Sends the replies `events` call for, in their order, as one batch."""
        outbox: list[tuple[str, dict[str, Any]]] = []
        now = time.monotonic()
        for event in events:
            pending = self.pending.get(event.request_id)
            if pending is None:
                continue
            if event.kind == "token":
                pending.text += event.data["text"]
                pending.tokens.append(event.data)
                continue
            self._flush(event.request_id, pending, now, outbox)
            data = {**event.data, "server": self.server_id} if event.kind == "started" else event.data
            outbox.append(_reply(pending, event.request_id, event.kind, data))
            if event.kind in {"done", "error"}:
                self.pending.pop(event.request_id, None)
                if self.by_owner.get(pending.owner) == event.request_id:
                    del self.by_owner[pending.owner]
        for request_id, pending in list(self.pending.items()):
            if pending.tokens and now - pending.last_sent >= FRAME_INTERVAL:
                self._flush(request_id, pending, now, outbox)
        await self._send(outbox)

    def _flush(self, request_id: str, pending: _Pending, now: float, outbox: list) -> None:
        """Adds the request's coalesced tokens, if any, to `outbox` as one frame."""
        if pending.tokens:
            outbox.append(_reply(pending, request_id, "tokens", {"text": pending.text, "tokens": pending.tokens}))
            pending.text, pending.tokens, pending.last_sent = "", [], now

    async def _flush_all(self) -> None:
        outbox: list[tuple[str, dict[str, Any]]] = []
        now = time.monotonic()
        for request_id, pending in list(self.pending.items()):
            self._flush(request_id, pending, now, outbox)
        await self._send(outbox)

    async def _send(self, outbox: list[tuple[str, dict[str, Any]]]) -> None:
        """One round trip for a step's replies (the channel layer's send_many); a full or
        vanished reply channel must not stop the server."""
        if not outbox:
            return
        try:
            refused = await self.layer.send_many(outbox)
        except Exception:
            log.warning("could not send %d replies", len(outbox), exc_info=True)
            return
        for channel, message in refused:
            log.warning("could not reply to %s for %s: its channel is full", channel, message["request_id"])


def _reply(pending: _Pending, request_id: str, kind: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return pending.reply_channel, {"type": "model.event", "request_id": request_id, "kind": kind, **data}
