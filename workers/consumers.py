"""Websocket consumers that belong to no single exercise."""

from __future__ import annotations

import json
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

MAX_FRAME_BYTES = 4096


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
        if text_data is None or len(text_data.encode()) > MAX_FRAME_BYTES:
            await self.send_json({"type": "error", "error": "send JSON text frames of at most 4 KiB"})
            return
        try:
            message = json.loads(text_data)
        except json.JSONDecodeError:
            await self.send_json({"type": "error", "error": "that frame is not valid JSON"})
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
