"""The Redis channel layer, with a message-loss bug of channels-redis 4.3.0 fixed.

In one process, one coroutine at a time pops messages for all of the process's consumers
(BZPOPMIN on the process's key) and hands them out. If that coroutine's consumer goes away at
the wrong moment (a websocket closes), its receive is cancelled while the pop is in flight:
Redis has removed the message, but the layer never saves it to its backup queue, and the
message meant for *another* consumer is lost. On a busy server this happens whenever learners
leave: an answer to someone else silently vanishes (tests/test_channel_layer.py).

Here the pop runs shielded from the cancel and finishes as if nothing had happened:

- on a process's own channels (names with "!"), the message it took is handed to its
  consumer's local buffer, as the layer does with every message it pops, and the next pop
  waits for that, so the messages of one consumer keep their order (were the message put back
  into Redis instead, a later one, such as a request's "done" after its "candidates", could be
  popped and delivered first, and the consumer, finished with the request, would drop the
  earlier one);
- on shared channels (the model servers' request channel), it is put back at the front of the
  queue for the next reader; order between different requests does not matter there.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import defaultdict

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
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # One pop at a time per channel key, including a cancelled receive's pop still in flight;
        # per event loop, as asyncio locks belong to one (tests run one loop after another).
        self._pop_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    async def _brpop_with_clean(self, index, channel, timeout):
        abandoned = asyncio.Event()  # set when the receive that asked for this pop is cancelled

        async def pop():
            locks = self._pop_locks.setdefault(asyncio.get_running_loop(), defaultdict(asyncio.Lock))
            async with locks[channel]:
                member = await super(CourseChannelLayer, self)._brpop_with_clean(index, channel, timeout)
                if member is not None and abandoned.is_set() and "!" in channel:
                    await self._deliver_here(index, channel, member)
                    return None
                return member

        popping = asyncio.ensure_future(pop())
        try:
            return await asyncio.shield(popping)
        except asyncio.CancelledError:
            abandoned.set()
            popping.add_done_callback(lambda done: self._after_abandoned_pop(done, index, channel))
            raise

    def _buffer(self, member: bytes) -> None:
        """What receive() does with a message it popped: into its consumer's local buffer."""
        message = self.deserialize(member)
        destination = message.pop("__asgi_channel__", None)
        for name in destination if isinstance(destination, list) else [destination]:
            if name is not None:
                self.receive_buffer[name].put_nowait(message)

    async def _deliver_here(self, index, channel_key: str, member: bytes) -> None:
        self._buffer(member)
        await self._clean_receive_backup(index, channel_key)

    def _after_abandoned_pop(self, pop: asyncio.Future, index, channel) -> None:
        if pop.cancelled() or pop.exception() is not None or pop.result() is None:
            return
        if "!" in channel:
            # Finished just as its receive was cancelled, before it saw `abandoned`: hand the
            # message out now. The next pop has had no round trip to Redis yet, so nothing newer
            # can have been handed out before it.
            self._buffer(pop.result())
            task = asyncio.ensure_future(self._clean_receive_backup(index, channel))
        else:
            # The message sits in the backup queue: back to the main queue with it, now.
            connection = self.connection(index)
            task = asyncio.ensure_future(connection.eval(_RESTORE, 0, channel, self._backup_channel_name(channel)))
        self.receive_cleaners.append(task)
        task.add_done_callback(self.receive_cleaners.remove)
