"""Rate-limit buckets on Redis: exact across every gateway sharing it.

Decisions are made by one Lua script (:data:`SCRIPT`), atomic on the server: it reads a group's
buckets, decides every rate with Redis's own clock (``TIME``; never a gateway's, so skewed nodes
cannot stretch a limit) and writes them back only when a request is admitted. A group's keys
share a hash tag (``bastion:rl:{digest}:…``), so the script stays in one slot of a Redis
Cluster. The script's ``tat`` arithmetic is the integer-microsecond GCRA of
:mod:`~bastion.ratelimit.gcra` (Lua numbers are doubles, exact to 2**53: microseconds since 1970
fit with room to spare).

A round trip per request would halve a gateway's throughput, so the decisions asked during one
event-loop turn are queued and sent together when the loop gets to the callback scheduled with
:meth:`~asyncio.loop.call_soon`: one ``EVALSHA`` per bucket, however many requests of the turn
it has (``n`` requests to one bucket at one instant are decided as ``n`` calls one after the
other would be: the first ``m`` admitted, the rest refused with the same wait, since a refusal
changes nothing), all of them written at once on one connection. Each call names one hash tag,
so this holds on a Cluster too. At most ``pool_size`` batches are in flight; while they are, new
decisions wait and go out together with the next batch (a slow Redis makes batches larger, not
connections more).

Redis unreachable, slow (``timeout``) or answering an error: every decision of the batch raises
:class:`~bastion.ratelimit.LimiterUnavailable`; the caller applies its ``on_error``. Nothing is
retried (a retry would only delay the answer the caller needs now).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from collections.abc import Sequence
from typing import Any
from typing import Final

try:
    import redis.asyncio as aioredis
    from redis.asyncio.connection import AbstractConnection
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError
    from redis.exceptions import NoScriptError
    from redis.exceptions import ResponseError
except ImportError as exc:  # pragma: no cover - depends on the extra
    raise ImportError("a redis:// state URL needs the redis extra: pip install 'bastion[redis]'") from exc

from bastion.ratelimit import LimiterUnavailable
from bastion.ratelimit.gcra import Rate
from bastion.ratelimit.gcra import Refusal

__all__ = ["SCRIPT", "RedisLimiter"]

#: KEYS: one group's buckets (one hash slot). ARGV: the number of requests ``n``, then interval
#: and tolerance (µs) per key. Decides the ``n`` requests one after the other at Redis's
#: ``TIME``; returns ``{admitted, index, wait}``: the first ``admitted`` were admitted (and are
#: stored), the others refused by rate ``index`` (0-based; -1 when none was) for ``wait`` µs.
SCRIPT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local tats = {}
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i])) or 0
  if tat < now then tat = now end
  tats[i] = tat
end
local admitted, worst, index = 0, 0, -1
while admitted < n do
  for i = 1, #KEYS do
    local early = tats[i] - tonumber(ARGV[2 * i + 1]) - now
    if early > worst then worst, index = early, i - 1 end
  end
  if worst > 0 then break end
  for i = 1, #KEYS do tats[i] = tats[i] + tonumber(ARGV[2 * i]) end
  admitted = admitted + 1
end
if admitted > 0 then
  for i = 1, #KEYS do
    redis.call('SET', KEYS[i], string.format('%.0f', tats[i]),
               'PX', string.format('%.0f', math.ceil((tats[i] - now) / 1000) + 1))
  end
end
return {admitted, index, worst}
"""
_SHA: Final = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()

#: The check for bytes or an end of file on an idle connection (renamed in redis-py 8).
_CAN_READ: Final = "can_read" if hasattr(AbstractConnection, "can_read") else "can_read_destructive"

#: Buckets whose encoded command is kept per bound group (cleared when full).
_BUCKET_CACHE: Final = 4096


async def _reply(connection: Any) -> Any:
    """The next reply on ``connection``; an error reply is returned, not raised."""
    try:
        # no per-read timer: the batch's own deadline (``timeout``) covers the reads
        return await connection.read_response(timeout=math.inf)
    except ResponseError as exc:
        return exc


def _bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


#: ``SCRIPT LOAD`` of :data:`SCRIPT`, in RESP.
_LOAD_SCRIPT: Final = b"*3\r\n" + _bulk(b"SCRIPT") + _bulk(b"LOAD") + _bulk(SCRIPT.encode())


class _Bucket:
    """One bucket group's command, encoded once, and the requests of this turn waiting on it."""

    __slots__ = ("head", "tail", "waiting")

    def __init__(self, keys: Sequence[str], argv: Sequence[int]) -> None:
        args = 3 + len(keys) + 1 + len(argv)
        #: ``EVALSHA sha numkeys key…`` in RESP, up to the request count.
        self.head = b"*%d\r\n" % args + b"".join(
            _bulk(part)
            for part in (b"EVALSHA", _SHA.encode(), b"%d" % len(keys), *(k.encode() for k in keys))
        )
        #: The intervals and tolerances after it.
        self.tail = b"".join(_bulk(b"%d" % n) for n in argv)
        self.waiting: list[asyncio.Future[Refusal | None]] = []

    def command(self, count: int) -> bytes:
        """The call deciding ``count`` requests."""
        return self.head + _bulk(b"%d" % count) + self.tail


_Batch = list[tuple[_Bucket, list["asyncio.Future[Refusal | None]"]]]


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
            pool_size: Batches in flight at most, each on a connection of its own (kept open
                between batches).
        """
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            max_connections=pool_size,
        )
        self._pool = self._redis.connection_pool
        self._prefix = prefix
        self._timeout = timeout
        self._pool_size = pool_size
        #: Buckets with requests waiting for the next batch, in the order they were first asked.
        self._queue: list[_Bucket] = []
        self._scheduled = False
        self._in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Connected connections between batches (at most ``pool_size``: one per batch in flight).
        self._idle: list[Any] = []
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

    def submit(self, bucket: _Bucket) -> asyncio.Future[Refusal | None]:
        """Queue one request of ``bucket`` for this loop turn's batch."""
        loop = self._loop
        if not self._scheduled or loop is None:
            # once per turn: the loop of this turn (a limiter outlives no loop, but tests start
            # several), and the callback that sends what the turn asked
            loop = self._loop = asyncio.get_running_loop()
            self._scheduled = True
            loop.call_soon(self._flush)
        future = loop.create_future()
        waiting = bucket.waiting
        if not waiting:
            self._queue.append(bucket)
        waiting.append(future)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        if self._queue and self._in_flight < self._pool_size:
            self._start()
        # else: a batch in flight sends what waits when it comes back (see _sent)

    def _start(self) -> None:
        queue, self._queue = self._queue, []
        batch: _Batch = []
        for bucket in queue:
            batch.append((bucket, bucket.waiting))
            bucket.waiting = []
        self._in_flight += 1
        assert self._loop is not None  # set by submit, which queued the buckets
        task = self._loop.create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        if self._queue and not self._scheduled:
            self._start()

    async def _send(self, batch: _Batch) -> None:
        self.batches += 1
        try:
            async with asyncio.timeout(self._timeout):
                replies = await self._call(batch)
        except Exception as exc:  # whatever it is, no request may wait forever
            reason = f"redis: {type(exc).__name__}"
            for _, futures in batch:
                for future in futures:
                    if not future.done():
                        future.set_exception(LimiterUnavailable(reason))
            return
        for (_, futures), reply in zip(batch, replies, strict=True):
            if isinstance(reply, BaseException):
                reason = f"redis: {type(reply).__name__}"
                for future in futures:
                    if not future.done():
                        future.set_exception(LimiterUnavailable(reason))
                continue
            admitted = int(reply[0])
            self.admitted += admitted
            refusal = Refusal(int(reply[1]), int(reply[2])) if admitted < len(futures) else None
            for number, future in enumerate(futures):
                if not future.done():
                    future.set_result(None if number < admitted else refusal)

    async def _call(self, batch: _Batch) -> list[Any]:
        """Write every call of ``batch`` at once on one connection, then read the replies (an
        error reply is returned in its place)."""
        idle = self._idle
        # Connections of their own, not borrowed from the pool per batch: the pool's bookkeeping
        # cost more than a batch's own work.
        connection = idle.pop() if idle else self._pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            with contextlib.suppress(ConnectionError):  # raised once it has disconnected
                if connection.is_connected and await getattr(connection, _CAN_READ)():
                    # bytes or an end of file on an idle connection: the server closed it
                    # (a restart) or it is out of step; either way, a new one
                    await connection.disconnect(nowait=True)
            await connection.connect()  # a no-op while connected
            commands = [bucket.command(len(futures)) for bucket, futures in batch]
            await connection.send_packed_command(b"".join(commands), check_health=False)
            replies = [await _reply(connection) for _ in commands]
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:
                # a restarted or flushed server: load the script, then send those calls again,
                # in one write on this connection (the others were decided: sending them twice
                # would count them twice)
                await connection.send_packed_command(
                    _LOAD_SCRIPT + b"".join(commands[i] for i in missing), check_health=False
                )
                loaded = await _reply(connection)
                if isinstance(loaded, ResponseError):
                    raise loaded
                for i in missing:
                    replies[i] = await _reply(connection)
        except BaseException:
            # a connection left mid-reply would hand the rest to the next batch: dropped
            await connection.disconnect(nowait=True)
            raise
        idle.append(connection)
        return replies

    def key_prefix(self, namespace: str, value: str) -> str:
        """``{prefix}rl:{digest}:`` for a bucket: the digest of namespace and value is the hash
        tag (a value can hold any byte, ``}`` included, so it is never put in a key as it is)."""
        digest = hashlib.blake2b(f"{namespace}\0{value}".encode(), digest_size=12).hexdigest()
        return f"{self._prefix}rl:{{{digest}}}:"

    async def close(self) -> None:
        """Wait for batches in flight, then close the connections."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.disconnect()
        await self._redis.aclose()


class _RedisBound:
    __slots__ = ("_argv", "_buckets", "_labels", "_limiter", "_namespace")

    def __init__(self, limiter: RedisLimiter, namespace: str, rates: tuple[Rate, ...]) -> None:
        self._limiter = limiter
        self._namespace = namespace
        self._labels = [f"{index}:{rate.label}" for index, rate in enumerate(rates)]
        self._argv = [n for rate in rates for n in (rate.interval, rate.tolerance)]
        self._buckets: dict[str, _Bucket] = {}

    def decide(self, value: str) -> asyncio.Future[Refusal | None]:
        """Queue the decision for ``value``'s bucket; the future raises
        :class:`~bastion.ratelimit.LimiterUnavailable` when Redis cannot decide."""
        bucket = self._buckets.get(value)
        if bucket is None:
            bucket = self._bucket(value)
        return self._limiter.submit(bucket)

    def _bucket(self, value: str) -> _Bucket:
        buckets = self._buckets
        if len(buckets) >= _BUCKET_CACHE:
            buckets.clear()  # a bucket still waiting stays queued; the next request re-encodes it
        base = self._limiter.key_prefix(self._namespace, value)
        bucket = buckets[value] = _Bucket([base + label for label in self._labels], self._argv)
        return bucket
