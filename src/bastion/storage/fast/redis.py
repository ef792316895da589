"""Fast state on Redis: shared exactly across processes and machines.

Imported only when a ``redis://`` state URL is configured (``bastion[redis]``). Uses a
``BlockingConnectionPool`` so a burst waits for a connection instead of opening hundreds.
Consume-once is ``GETDEL``; add is ``SET NX PX``; incr sets its expiry only on creation
(``PEXPIRE … NX``, Redis ≥ 7).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - depends on the extra
    raise ImportError("a redis:// state URL needs the redis extra: pip install 'bastion[redis]'") from exc

from bastion.storage.protocols import StorageError


def _ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))


class RedisState:
    """:class:`~bastion.storage.protocols.FastState` on a Redis server."""

    def __init__(self, url: str, *, pool_size: int = 10, prefix: str = "bastion:") -> None:
        self._pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=pool_size, timeout=5)
        self._redis = aioredis.Redis(connection_pool=self._pool)
        self._prefix = prefix

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return await getattr(self._redis, method)(*args, **kwargs)
        except RedisError as exc:
            raise StorageError(f"redis {method} failed: {type(exc).__name__}") from exc

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._call("set", self._prefix + key, value, px=_ms(ttl))

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        return bool(await self._call("set", self._prefix + key, value, px=_ms(ttl), nx=True))

    async def get(self, key: str) -> bytes | None:
        value = await self._call("get", self._prefix + key)
        return bytes(value) if value is not None else None

    async def consume(self, key: str) -> bytes | None:
        value = await self._call("getdel", self._prefix + key)
        return bytes(value) if value is not None else None

    async def delete(self, key: str) -> None:
        await self._call("delete", self._prefix + key)

    async def incr(self, key: str, ttl: float, amount: int = 1) -> int:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incrby(self._prefix + key, amount)
                pipe.pexpire(self._prefix + key, _ms(ttl), nx=True)
                value, _ = await pipe.execute()
        except RedisError as exc:
            raise StorageError(f"redis incr failed: {type(exc).__name__}") from exc
        return int(value)

    async def ttl(self, key: str) -> float | None:
        ms = await self._call("pttl", self._prefix + key)
        return None if ms < 0 else ms / 1000

    async def publish(self, channel: str, message: bytes) -> None:
        await self._call("publish", self._prefix + channel, message)

    async def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._prefix + channel)
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    yield bytes(message["data"])
        except RedisError as exc:
            raise StorageError(f"redis subscribe failed: {type(exc).__name__}") from exc
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self._redis.aclose()
        await self._pool.aclose()
