"""The Redis channel layer, with a message-loss bug of channels-redis 4.3.0 fixed.

In one process, one coroutine at a time pops messages for all of the process's consumers
(BZPOPMIN on the process's key) and hands them out. If that coroutine's consumer goes away at
the wrong moment (a websocket closes), its receive is cancelled while the pop is in flight:
Redis has removed the message, but the layer never saves it to its backup queue, and the
message meant for *another* consumer is lost. On a busy server this happens whenever learners
leave: an answer to someone else silently vanishes (tests/test_channel_layer.py).

Here the pop runs shielded from the cancel and finishes: the message lands in the backup queue,
and the next pop, which begins by moving the backup queue back in front of the main one (as
channels-redis always does), takes it first. Pops on one channel take turns (a lock), so no
pop can overtake a cancelled one still in flight: were it allowed to, a later message, such as
a request's "done" after its "candidates", could be handed out first, and the consumer,
finished with that request, would drop the earlier one.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import defaultdict

from channels_redis.core import RedisChannelLayer


class CourseChannelLayer(RedisChannelLayer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # One pop at a time per channel key, a cancelled receive's pop still in flight included;
        # per event loop, as asyncio locks belong to one (tests run one loop after another).
        self._pop_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    async def _brpop_with_clean(self, index, channel, timeout):
        locks = self._pop_locks.setdefault(asyncio.get_running_loop(), defaultdict(asyncio.Lock))

        async def pop():
            async with locks[channel]:
                return await super(CourseChannelLayer, self)._brpop_with_clean(index, channel, timeout)

        # If the receive is cancelled, the pop still completes, and what it took stays in the
        # backup queue for the next pop.
        return await asyncio.shield(asyncio.ensure_future(pop()))
