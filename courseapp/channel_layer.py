"""The Redis channel layer, with one message-loss bug of channels-redis 4.3.0 fixed.

In one process, one coroutine at a time pops messages for all of the process's consumers
(BZPOPMIN on the process's key) and hands them out. If that coroutine's consumer goes away at
the wrong moment (a websocket closes), its receive is cancelled while the pop is in flight:
Redis has removed the message, but the layer never saves it to its backup queue, and the
message meant for *another* consumer is lost. On a busy server this happens whenever learners
leave: an answer to someone else silently vanishes (tests/test_channel_layer.py).

Here the pop runs shielded from the cancel; if it took a message after all, that message is put
back at the front of the queue at once, for the next coroutine that receives.
"""

from __future__ import annotations

import asyncio

from channels_redis.core import RedisChannelLayer

# Moves the backup queue back in front of the main queue (the same as channels-redis's own).
_RESTORE = """
    local backed_up = redis.call('ZRANGE', ARGV[2], 0, -1, 'WITHSCORES')
    for i = #backed_up, 1, -2 do
        redis.call('ZADD', ARGV[1], backed_up[i], backed_up[i - 1])
    end
    redis.call('DEL', ARGV[2])
"""


class CourseChannelLayer(RedisChannelLayer):
    async def _brpop_with_clean(self, index, channel, timeout):
        pop = asyncio.ensure_future(super()._brpop_with_clean(index, channel, timeout))
        try:
            return await asyncio.shield(pop)
        except asyncio.CancelledError:
            pop.add_done_callback(lambda done: self._restore(done, index, channel))
            raise

    def _restore(self, pop: asyncio.Future, index, channel) -> None:
        if pop.cancelled() or pop.exception() is not None or pop.result() is None:
            return
        # The message sits in the backup queue: back to the main queue with it, now.
        connection = self.connection(index)
        task = asyncio.ensure_future(connection.eval(_RESTORE, 0, channel, self._backup_channel_name(channel)))
        self.receive_cleaners.append(task)
        task.add_done_callback(self.receive_cleaners.remove)
