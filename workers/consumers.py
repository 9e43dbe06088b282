"""Websocket consumers that belong to no single exercise."""

from __future__ import annotations

import json
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.http import Http404
from django.template.loader import render_to_string

from workers.jobs import get_job_for_user
from workers.jobs.panel import job_panel_context
from workers.models import Job

MAX_FRAME_BYTES = 4096


def read_json_frame(text_data: str | None, max_bytes: int) -> Any:
    """The JSON a client sent, or ValueError with a message to send back to it."""
    if text_data is None or len(text_data.encode()) > max_bytes:
        raise ValueError(f"send JSON text frames of at most {max_bytes // 1024} KiB")
    try:
        message = json.loads(text_data)
    except json.JSONDecodeError:
        raise ValueError("that frame is not valid JSON") from None
    return message


class HealthConsumer(AsyncWebsocketConsumer):
    """`ws/health/`: proves the whole live path works, browser to channel layer and back.

    A `{"type": "ping"}` frame is not answered directly: the pong is sent to this consumer's
    own channel through the channel layer (Redis), so a pong means the layer is healthy too.
    Pages use it to show whether live exercises can work right now.
    """

    async def connect(self) -> None:
        await self.accept()
        user = self.scope.get("user")
        await self.send_json({"type": "hello", "signed_in": bool(user and user.is_authenticated)})

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            message = read_json_frame(text_data, MAX_FRAME_BYTES)
        except ValueError as exc:
            await self.send_json({"type": "error", "error": str(exc)})
            return
        if not isinstance(message, dict) or message.get("type") != "ping":
            await self.send_json({"type": "error", "error": 'unknown message; send {"type": "ping"}'})
            return
        await self.channel_layer.send(
            self.channel_name, {"type": "health.pong", "echo": str(message.get("echo", ""))[:64]}
        )

    async def health_pong(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "pong", "echo": event["echo"]})

    async def send_json(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content))


class JobConsumer(AsyncWebsocketConsumer):
    """`ws/jobs/<code>/`: one job's live panel for its owner, pushed as HTML whenever it changes.

    The frames are jobs/_job.html, the same partial the page and its polling render, so the
    htmx ws extension swaps it in by id. Anyone but the owner is refused, like a missing job.
    The socket closes (1000, so htmx does not reconnect) once the job has ended.
    """

    group: str | None = None

    async def connect(self) -> None:
        code = self.scope["url_route"]["kwargs"]["code"]
        if not await self.owns(code):
            await self.close(code=4404)
            return
        self.group = Job.group_for(code)
        # Join before the first render, so no update can fall between the two.
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_panel()

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        pass  # nothing to say to it: cancel is an ordinary POST

    async def job_update(self, event: dict[str, Any]) -> None:
        await self.send_panel()

    async def send_panel(self) -> None:
        html, finished = await self.render()
        if html is None:  # deleted meanwhile
            await self.close()
            return
        await self.send(text_data=html)
        if finished:
            await self.close()

    @database_sync_to_async
    def owns(self, code: Any) -> bool:
        try:
            get_job_for_user(self.scope.get("user"), code)
        except Http404:
            return False
        return True

    @database_sync_to_async
    def render(self) -> tuple[str | None, bool]:
        code = self.scope["url_route"]["kwargs"]["code"]
        job = Job.objects.filter(code=code).first()
        if job is None:
            return None, True
        # No request here, so no CSRF token: the panel's cancel button posts through htmx,
        # which sends the token from <body>.
        context = {**job_panel_context(job), "user": self.scope.get("user")}
        return render_to_string("jobs/_job.html", context), job.is_finished
