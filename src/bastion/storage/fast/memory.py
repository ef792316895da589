"""In-process fast state: the reference implementation, for one process.

Expiry is lazy (checked on access) plus a sweep every few thousand writes so abandoned keys do
not accumulate. Everything runs on the event loop thread, so each operation is atomic.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from collections.abc import Callable

from bastion.storage.protocols import StorageError

_SWEEP_EVERY = 4096
#: What Redis reads as an integer: canonical decimal, no sign but "-", no leading zero or space.
_INTEGER = re.compile(rb"0|-?[1-9][0-9]*")
_INT64 = range(-(2**63), 2**63)


def counter_value(value: bytes, amount: int) -> int:
    """``value`` read as a counter plus ``amount``, refused as Redis refuses ``INCRBY``.

    Raises:
        StorageError: ``value`` is not a canonical 64-bit decimal integer, or the sum overflows.
    """
    if _INTEGER.fullmatch(value) is None or int(value) not in _INT64:
        raise StorageError("incr on a value that is not an integer counter")
    total = int(value) + amount
    if total not in _INT64:
        raise StorageError("incr would overflow a 64-bit counter")
    return total


class MemoryState:
    """:class:`~bastion.storage.protocols.FastState` held in this process only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._data: dict[str, tuple[bytes, float]] = {}
        self._subscribers: defaultdict[str, set[asyncio.Queue[bytes]]] = defaultdict(set)
        self._writes = 0

    def _live(self, key: str) -> tuple[bytes, float] | None:
        item = self._data.get(key)
        if item is not None and item[1] <= self._clock():
            del self._data[key]
            return None
        return item

    def _store(self, key: str, value: bytes, ttl: float) -> None:
        self._data[key] = (value, self._clock() + ttl)
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            now = self._clock()
            for stale in [k for k, (_, exp) in self._data.items() if exp <= now]:
                del self._data[stale]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._store(key, value, ttl)

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        if self._live(key) is not None:
            return False
        self._store(key, value, ttl)
        return True

    async def get(self, key: str) -> bytes | None:
        item = self._live(key)
        return item[0] if item else None

    async def consume(self, key: str) -> bytes | None:
        item = self._live(key)
        if item is None:
            return None
        del self._data[key]
        return item[0]

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def incr(self, key: str, ttl: float, amount: int = 1) -> int:
        item = self._live(key)
        if item is None:
            self._store(key, str(amount).encode(), ttl)
            return amount
        value = counter_value(item[0], amount)
        self._data[key] = (str(value).encode(), item[1])
        return value

    async def ttl(self, key: str) -> float | None:
        item = self._live(key)
        return None if item is None else item[1] - self._clock()

    async def publish(self, channel: str, message: bytes) -> None:
        for queue in list(self._subscribers[channel]):
            queue.put_nowait(message)

    async def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._subscribers[channel].add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers[channel].discard(queue)

    async def close(self) -> None:
        self._data.clear()
