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

Sending takes one round trip to Redis instead of channels-redis's four (drop expired messages,
count, add, renew the expiry), and `send_many` sends a whole list in one: the model server
sends a frame per learner every few tens of milliseconds, and on a small machine the Python
work of those round trips competes with the model for the CPU (bench/bench_model_server.py).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import defaultdict

from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer

# channels-redis's send as one script: the same steps and the same keys, atomic as a bonus.
# KEYS[1] the channel's sorted set; ARGV: expired-before, capacity, score (now), message, expiry.
_SEND = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


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

    async def send(self, channel, message):
        """Puts `message` on `channel` as channels-redis does, in one round trip; ChannelFull
        when the channel already holds its capacity."""
        index, arguments = self._send_arguments(channel, message)
        if not await self.connection(index).eval(_SEND, 1, *arguments):
            raise ChannelFull()

    async def send_many(self, messages: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
        """Sends (channel, message) pairs in their order, in one round trip per Redis server;
        returns the pairs refused because their channel was full."""
        batches: dict[int, list[tuple[tuple[str, dict], list]]] = defaultdict(list)
        for channel, message in messages:
            index, arguments = self._send_arguments(channel, message)
            batches[index].append(((channel, message), arguments))
        refused = []
        for index, batch in batches.items():
            pipe = self.connection(index).pipeline(transaction=False)
            for _, arguments in batch:
                pipe.eval(_SEND, 1, *arguments)
            for (pair, _), added in zip(batch, await pipe.execute(), strict=True):
                if not added:
                    refused.append(pair)
        return refused

    def _send_arguments(self, channel: str, message: dict) -> tuple[int, list]:
        """(which Redis server, the script's key and arguments) for one message."""
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        assert "__asgi_channel__" not in message
        key_name = channel
        if "!" in channel:  # a process-local channel: its full name travels in the message
            message = {**message, "__asgi_channel__": channel}
            key_name = self.non_local_name(channel)
            index = self.consistent_hash(channel)
        else:
            index = next(self._send_index_generator)
        now, expiry = time.time(), int(self.expiry)
        arguments = [self.prefix + key_name, int(now) - expiry, self.get_capacity(channel), now]
        return index, [*arguments, self.serialize(message), expiry]
