"""What the web processes and the model servers say to each other over the channel layer.

No torch here: the web side imports this module.

- A web process sends a `model.request` to the shared channel REQUEST_CHANNEL. Any model server
  may take it; several servers reading the one channel is how serving scales out.
- The server answers with `model.event` messages straight to the request's reply channel:
  kinds `queued` (with a position), `started`, `tokens` (coalesced text), `candidates`,
  `scored`, `inspected` (tokens, one head's attention, the logit lens), `done` (with a reason
  and usage), `error`.
- Cancels go to every server through the SERVERS_GROUP group: whichever has the request drops it.
- Each server keeps a presence key in Redis alive, so pages can tell whether a model is up.
- A request may name a LoRA adapter: {"key": a name unique to that adapter file, "path": the
  file}. The web side decides who may use which adapter (only its owner) before it sends one;
  a server loads it on first use and keeps the most recently used ones.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from typing import Any

REQUEST_CHANNEL = "model.requests"
SERVERS_GROUP = "model-servers"
PRESENCE_PREFIX = "course:model-server:"
PRESENCE_TTL_SECONDS = 6
# "inspect" looks inside the model for a short prompt (workers/inference/inspect.py) instead of
# generating; its request names the `layer` and `head` whose attention to send back.
MODES = {"generate", "score", "inspect"}


def request_message(
    request_id: str,
    reply_channel: str,
    owner: str,
    prompt: str,
    params: dict[str, Any],
    *,
    chat: bool = False,
    mode: str = "generate",
    prompt_ids: list[int] | None = None,
    continuation_ids: list[int] | None = None,
    timeout: float = 120.0,
    layer: int | None = None,
    head: int | None = None,
    adapter: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "type": "model.request",
        "request_id": request_id,
        "reply_channel": reply_channel,
        "owner": owner,
        "prompt": prompt,
        "prompt_ids": prompt_ids or [],
        "continuation_ids": continuation_ids or [],
        "chat": chat,
        "mode": mode,
        "params": params,
        "timeout": timeout,
        "layer": layer,
        "head": head,
        "adapter": adapter,
    }


def cancel_message(request_id: str) -> dict[str, Any]:
    return {"type": "model.cancel", "request_id": request_id}


_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def redis_client(redis_url: str):
    """A redis.asyncio client for the running event loop (a client cannot move between loops)."""
    import redis.asyncio as aioredis

    loop = asyncio.get_running_loop()
    per_loop = _clients.setdefault(loop, {})
    if redis_url not in per_loop:
        per_loop[redis_url] = aioredis.from_url(redis_url)
    return per_loop[redis_url]


async def live_servers(redis_url: str) -> list[dict[str, Any]]:
    """The model servers that announced themselves in the last few seconds."""
    client = redis_client(redis_url)
    servers = []
    async for key in client.scan_iter(match=PRESENCE_PREFIX + "*", count=100):
        raw = await client.get(key)
        if raw:
            servers.append(json.loads(raw))
    return servers


async def announce(client, server_id: str, info: dict[str, Any]) -> None:
    info = {**info, "id": server_id, "at": time.time()}
    await client.set(PRESENCE_PREFIX + server_id, json.dumps(info), ex=PRESENCE_TTL_SECONDS)
