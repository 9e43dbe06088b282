"""Per-learner rate limits in Redis, shared by every web process."""

from __future__ import annotations

import time

from django.conf import settings

from workers.inference.protocol import redis_client


async def allow(scope: str, who: str, per_minute: int) -> bool:
    """True if `who` may do one more `scope` action this minute (a fixed one-minute window)."""
    window = int(time.time() // 60)
    key = f"course:ratelimit:{scope}:{who}:{window}"
    client = redis_client(settings.REDIS_URL)
    count = await client.incr(key)
    if count == 1:
        await client.expire(key, 120)
    return count <= per_minute
