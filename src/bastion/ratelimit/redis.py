"""Rate-limit buckets on Redis: exact across every gateway sharing it.

Each decision is one Lua script (:data:`SCRIPT`), atomic on the server: it reads the group's
buckets, decides every rate with Redis's own clock (``TIME``; never a gateway's, so skewed nodes
cannot stretch a limit) and writes them back only when all admit the request. A group's keys
share a hash tag (``bastion:rl:{digest}:…``), so the script stays in one slot of a Redis
Cluster. The script's ``tat`` arithmetic is the integer-microsecond GCRA of
:mod:`~bastion.ratelimit.gcra` (Lua numbers are doubles, exact to 2**53: microseconds since 1970
fit with room to spare).

A round trip per request would halve a gateway's throughput, so the decisions asked during one
event-loop turn are queued and sent together, one pipeline of ``EVALSHA`` calls, when the loop
gets to the callback scheduled with :meth:`~asyncio.loop.call_soon`. While one batch is in
flight the next turn's decisions form the next batch.

Redis unreachable, slow (``timeout``) or answering an error: every decision of the batch raises
:class:`~bastion.ratelimit.LimiterUnavailable`; the caller applies its ``on_error``. Nothing is
retried (a retry would only delay the answer the caller needs now).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any
from typing import Final

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import NoScriptError
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - depends on the extra
    raise ImportError("a redis:// state URL needs the redis extra: pip install 'bastion[redis]'") from exc

from bastion.ratelimit import LimiterUnavailable
from bastion.ratelimit.gcra import Rate
from bastion.ratelimit.gcra import Refusal

__all__ = ["SCRIPT", "RedisLimiter"]

#: KEYS: the group's buckets (one hash slot). ARGV: interval and tolerance (µs) per key.
#: Returns ``{-1, 0}`` (admitted and stored) or ``{index, wait}`` (refused, nothing stored).
SCRIPT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
local worst, index = 0, -1
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i])) or 0
  if tat < now then tat = now end
  local early = tat - tonumber(ARGV[2 * i]) - now
  if early > worst then worst, index = early, i - 1 end
  tats[i] = tat + tonumber(ARGV[2 * i - 1])
end
if worst > 0 then return {index, worst} end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]),
             'PX', string.format('%.0f', math.ceil((tats[i] - now) / 1000) + 1))
end
return {-1, 0}
"""
_SHA: Final = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()

_Pending = tuple["asyncio.Future[Refusal | None]", list[str], list[int]]


class RedisLimiter:
    """:class:`~bastion.ratelimit.Limiter` on a Redis server (or a proxy in front of a cluster)."""

    def __init__(
        self, url: str, *, prefix: str = "bastion:", timeout: float = 0.5, pool_size: int = 10
    ) -> None:
        """Decide on the Redis at ``url``; keys start with ``prefix``.

        Args:
            url: ``redis://``, ``rediss://`` or ``unix://``.
            prefix: Namespace of the keys (the fast-state store's).
            timeout: Seconds a batch may take (connect or answer) before its decisions fail.
            pool_size: Connections kept (one per batch in flight).
        """
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            max_connections=pool_size,
        )
        self._prefix = prefix
        self._timeout = timeout
        self._queue: list[_Pending] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        #: Round trips made (batches sent), for tests and benchmarks.
        self.batches = 0
        #: Requests admitted (and counted on Redis) so far by this process.
        self.admitted = 0

    def bind(self, namespace: str, rates: Sequence[Rate]) -> _RedisBound:
        """The group ``rates`` under ``namespace``."""
        if not rates:
            raise ValueError("a limit group needs at least one rate")
        return _RedisBound(self, namespace, tuple(rates))

    def submit(self, keys: list[str], argv: list[int]) -> asyncio.Future[Refusal | None]:
        """Queue one decision for this loop turn's batch."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Refusal | None] = loop.create_future()
        self._queue.append((future, keys, argv))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        self._scheduled = False
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        self.batches += 1
        try:
            async with asyncio.timeout(self._timeout):
                results = await self._evalsha(batch)
                if any(isinstance(result, NoScriptError) for result in results):
                    # a restarted or flushed server: load the script once, send the batch again
                    await self._redis.script_load(SCRIPT)
                    results = await self._evalsha(batch)
        except (RedisError, OSError, TimeoutError) as exc:
            reason = f"redis: {type(exc).__name__}"
            for future, _, _ in batch:
                if not future.done():
                    future.set_exception(LimiterUnavailable(reason))
            return
        for (future, _, _), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(LimiterUnavailable(f"redis: {type(result).__name__}"))
            else:
                index, wait = int(result[0]), int(result[1])
                if index < 0:
                    self.admitted += 1
                    future.set_result(None)
                else:
                    future.set_result(Refusal(index, wait))

    async def _evalsha(self, batch: list[_Pending]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for _, keys, argv in batch:
                pipe.evalsha(_SHA, len(keys), *keys, *argv)
            return list(await pipe.execute(raise_on_error=False))

    def key_prefix(self, namespace: str, value: str) -> str:
        """``{prefix}rl:{digest}:`` for a bucket: the digest of namespace and value is the hash
        tag (a value can hold any byte, ``}`` included, so it is never put in a key as it is)."""
        digest = hashlib.blake2b(f"{namespace}\0{value}".encode(), digest_size=12).hexdigest()
        return f"{self._prefix}rl:{{{digest}}}:"

    async def close(self) -> None:
        """Wait for batches in flight, then close the connections."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._redis.aclose()


class _RedisBound:
    __slots__ = ("_argv", "_labels", "_limiter", "_namespace")

    def __init__(self, limiter: RedisLimiter, namespace: str, rates: tuple[Rate, ...]) -> None:
        self._limiter = limiter
        self._namespace = namespace
        self._labels = [f"{index}:{rate.label}" for index, rate in enumerate(rates)]
        self._argv = [n for rate in rates for n in (rate.interval, rate.tolerance)]

    def decide(self, value: str) -> asyncio.Future[Refusal | None]:
        """Queue the decision for ``value``'s bucket; the future raises
        :class:`~bastion.ratelimit.LimiterUnavailable` when Redis cannot decide."""
        base = self._limiter.key_prefix(self._namespace, value)
        return self._limiter.submit([base + label for label in self._labels], self._argv)
