"""Websockets of the live exercises: thin shells between a learner and the model servers.

`ModelSessionConsumer` does what both kinds share: who the learner is, whether a model server
is up, rate limits, sending requests to the model servers and cancelling them when the learner
stops or leaves. Two protocols sit on top:

- `ModelApiConsumer` (`ws/model/`): JSON in, JSON out. For programs, and the benchmarks.
- `ExerciseConsumer` (`ws/exercise/`): what the lesson widgets speak through htmx's websocket
  extension: form values in, HTML fragments out (swapped into the page by id).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.template.loader import render_to_string

from lessons.ratelimit import allow
from workers.consumers import read_json_frame
from workers.inference.protocol import REQUEST_CHANNEL, SERVERS_GROUP, cancel_message, live_servers, request_message
from workers.inference.sampling import BadRequest, SamplingParams

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 16_384
STATUS_INTERVAL = 3.0
WIDGET_RE = re.compile(r"[a-z0-9-]{1,100}")


class ModelSessionConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        self.owner = f"user:{user.pk}" if user and user.is_authenticated else f"anon:{self.channel_name}"
        self.requests: dict[str, dict[str, Any]] = {}
        self.model_up: bool | None = None
        await self.accept()
        self.status_task = asyncio.create_task(self._watch_model())

    async def disconnect(self, code: int) -> None:
        if not hasattr(self, "status_task"):
            return  # refused before it was accepted
        self.status_task.cancel()
        # A closed socket frees its rows within one engine step.
        for request_id in list(self.requests):
            await self.cancel_request(request_id)

    async def _watch_model(self) -> None:
        while True:
            try:
                up = bool(await live_servers(settings.REDIS_URL))
            except Exception:  # Redis hiccup: say "down" rather than crash the socket
                log.warning("could not read model server presence", exc_info=True)
                up = False
            if up != self.model_up:
                self.model_up = up
                await self.model_status(up)
            await asyncio.sleep(STATUS_INTERVAL)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            message = read_json_frame(text_data, MAX_FRAME_BYTES)
        except ValueError as exc:
            await self.error(str(exc))
            return
        if not isinstance(message, dict):
            await self.error("send a JSON object")
            return
        try:
            await self.handle(message)
        except BadRequest as exc:
            await self.error(str(exc), message)

    async def adapter(self, choice: Any) -> dict[str, str] | None:
        """The model request's adapter for a learner's choice ("" or None: the base model).

        Raises BadRequest unless the adapter is one of this learner's own finished jobs.
        """
        if not choice:
            return None
        from workers.jobs.adapters import AdapterNotFound, adapter_for_user

        try:
            found = await database_sync_to_async(adapter_for_user)(self.scope.get("user"), str(choice))
        except AdapterNotFound as exc:
            raise BadRequest(str(exc)) from None
        return found.message

    async def submit(
        self, context: dict[str, Any], prompt: str, params: dict[str, Any], lane: str = "", **options
    ) -> str | None:
        """Sends a request to the model servers; returns its id, or None after telling the learner why not.

        A learner has one generation at a time per `lane`: a new one replaces the old. The
        side-by-side comparison runs two lanes at once (the base model and the adapter).
        """
        if not self.model_up:
            self.model_up = bool(await live_servers(settings.REDIS_URL))
            if not self.model_up:
                await self.model_status(False)
                await self.error(
                    "The model server is not running right now. This page will notice when it is back.", context
                )
                return None
        if not await allow("ws", self.owner, settings.MODEL_WS_RATE_PER_MINUTE):
            await self.error("Too many requests: wait a few seconds and try again.", context)
            return None
        SamplingParams.from_dict(params)  # refuse bad parameters here, with the same messages
        request_id = uuid.uuid4().hex
        self.requests[request_id] = context
        owner = f"{self.owner}#{lane}" if lane else self.owner
        message = request_message(
            request_id, self.channel_name, owner, prompt, params,
            timeout=settings.MODEL_REQUEST_TIMEOUT, **options,
        )  # fmt: skip
        await self.channel_layer.send(REQUEST_CHANNEL, message)
        return request_id

    async def cancel_request(self, request_id: str) -> None:
        if self.requests.pop(request_id, None) is not None:
            await self.channel_layer.group_send(SERVERS_GROUP, cancel_message(request_id))

    async def model_event(self, event: dict[str, Any]) -> None:
        context = self.requests.get(event["request_id"])
        if context is None:
            return  # a request this socket no longer cares about (cancelled, replaced)
        if event["kind"] in {"done", "error"}:
            self.requests.pop(event["request_id"], None)
        await self.on_event(event["kind"], event, context)

    # Subclasses speak their own protocol:
    async def handle(self, message: dict[str, Any]) -> None:
        raise NotImplementedError

    async def on_event(self, kind: str, event: dict[str, Any], context: dict[str, Any]) -> None:
        raise NotImplementedError

    async def model_status(self, up: bool) -> None:
        raise NotImplementedError

    async def error(self, text: str, context: dict[str, Any] | None = None) -> None:
        raise NotImplementedError


class ModelApiConsumer(ModelSessionConsumer):
    """`ws/model/`: {"type": "generate" | "score" | "cancel", "id": "...", ...} in, JSON events out."""

    async def handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        client_id = str(message.get("id", ""))[:64]
        context = {"id": client_id}
        if kind == "cancel":
            for request_id, ctx in list(self.requests.items()):
                if ctx["id"] == client_id:
                    await self.cancel_request(request_id)
                    await self.send_json({"type": "done", "id": client_id, "reason": "cancelled"})
            return
        if kind not in {"generate", "score"}:
            raise BadRequest('unknown message type: use "generate", "score" or "cancel"')
        prompt = message.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadRequest("the prompt must be non-empty text")
        params = {
            k: message[k]
            for k in ("temperature", "top_k", "top_p", "seed", "max_tokens", "stop", "candidates")
            if k in message
        }
        options: dict[str, Any] = {
            "chat": bool(message.get("chat")),
            "adapter": await self.adapter(message.get("adapter")),
        }
        if kind == "score":
            continuation = message.get("continuation_ids")
            if not isinstance(continuation, list) or not continuation:
                raise BadRequest("score needs continuation_ids: the token ids to score after the prompt")
            options.update(mode="score", continuation_ids=continuation)
        await self.submit(context, prompt, params, **options)

    async def on_event(self, kind: str, event: dict[str, Any], context: dict[str, Any]) -> None:
        data = {k: v for k, v in event.items() if k not in {"type", "request_id", "kind"}}
        await self.send_json({"type": kind, "id": context["id"], **data})

    async def model_status(self, up: bool) -> None:
        await self.send_json({"type": "status", "model": "ready" if up else "unavailable"})

    async def error(self, text: str, context: dict[str, Any] | None = None) -> None:
        await self.send_json({"type": "error", "id": (context or {}).get("id", ""), "error": text})

    async def send_json(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content))


class ExerciseConsumer(ModelSessionConsumer):
    """`ws/exercise/?widget=ID`: one lesson widget. Form values in, HTML fragments out.

    Every widget keeps its whole state in its own form (the prompt, the tokens chosen so far,
    the sampler settings), so a reconnect loses nothing and the server remembers no widget.
    """

    async def connect(self) -> None:
        query = parse_qs(self.scope.get("query_string", b"").decode())
        self.widget = (query.get("widget") or [""])[0]
        if not WIDGET_RE.fullmatch(self.widget):
            await self.close(code=4400)
            return
        await super().connect()

    async def handle(self, message: dict[str, Any]) -> None:
        from lessons import live_exercises

        await live_exercises.handle(self, message)

    async def on_event(self, kind: str, event: dict[str, Any], context: dict[str, Any]) -> None:
        from lessons import live_exercises

        await live_exercises.on_event(self, kind, event, context)

    async def model_status(self, up: bool) -> None:
        await self.send_html("exercises/_model_status.html", {"up": up, "widget": self.widget})

    async def error(self, text: str, context: dict[str, Any] | None = None) -> None:
        # One socket per widget: a refused message (whose context is the message itself, with no
        # "widget" key) still reaches this widget's error line.
        await self.send_html("exercises/_error.html", {"widget": self.widget, "error": text})

    async def send_html(self, template: str, context: dict[str, Any]) -> None:
        await self.send(text_data=render_to_string(template, context))
