"""Every fast-state backend against a model: random sequences of operations, same results.

A hypothesis ``RuleBasedStateMachine`` drives set/add/get/consume/delete/incr/ttl/publish and the
passing of time on memory, the SQLite file (the embedded default) and Redis, and compares each
answer with a plain dictionary model. Memory and SQLite take an injected clock. Redis keeps its
own, so moving time there shortens every key's remaining life by the same amount (``PEXPIRE``),
which is what the passing of time does to a key. Times and TTLs are whole seconds, so the
milliseconds Redis really spends never cross an expiry the model sees.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import TypeVar

import pytest
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import rule
from hypothesis.stateful import run_state_machine_as_test

from bastion.storage.fast.memory import MemoryState
from bastion.storage.fast.sqlite import SQLiteState
from bastion.storage.protocols import FastState
from bastion.storage.protocols import StorageError

T = TypeVar("T")

KEYS = st.sampled_from(["a", "b", "c"])
#: Counters, values Redis refuses to count (leading zero, signs, spaces, NUL, 2^63), and the edges.
VALUES = st.sampled_from(
    [b"0", b"1", b"-3", b"42", b"x", b"", b"07", b"-0", b"+5", b" 5", b"1\x00", b"9223372036854775807"]
)
TTLS = st.integers(min_value=1, max_value=6)
AMOUNTS = st.integers(min_value=-3, max_value=5)
CHANNELS = st.sampled_from(["news", "alerts", "nobody"])
SUBSCRIBED = ("news", "alerts")
INT64 = range(-(2**63), 2**63)
INTEGER = re.compile(rb"0|-?[1-9][0-9]*")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """One fresh store per example, and how to move its time."""

    state: FastState
    advance: Callable[[int], Coroutine[Any, Any, None]]  # after the clock moved
    ttl_slack: float  # how much less than the model's TTL the backend may report
    cleanup: Callable[[], Coroutine[Any, Any, None]]


Opener = Callable[[Clock], Backend]


async def _nothing() -> None:
    return None


async def _clock_moved(seconds: int) -> None:
    """The backend reads the injected clock: moving the clock is all it takes."""


def memory_backend(clock: Clock) -> Backend:
    return Backend(MemoryState(clock=clock), _clock_moved, 0.0, _nothing)


def sqlite_backend(tmp_path: Path) -> Opener:
    def open_backend(clock: Clock) -> Backend:
        path = tmp_path / f"state-{secrets.token_hex(4)}.db"
        return Backend(SQLiteState(path, clock=clock, poll_interval=0.005), _clock_moved, 0.0, _nothing)

    return open_backend


def redis_backend(url: str) -> Opener:
    def open_backend(clock: Clock) -> Backend:
        import redis.asyncio as aioredis

        from bastion.storage.fast.redis import RedisState

        prefix = f"test:model:{secrets.token_hex(4)}:"
        raw = aioredis.Redis.from_url(url)

        async def advance(seconds: int) -> None:
            async for key in raw.scan_iter(match=prefix + "*"):
                remaining = await raw.pttl(key)
                if remaining >= 0 and remaining - seconds * 1000 <= 0:
                    await raw.delete(key)
                elif remaining >= 0:
                    await raw.pexpire(key, remaining - seconds * 1000)

        async def cleanup() -> None:
            async for key in raw.scan_iter(match=prefix + "*"):
                await raw.delete(key)
            await raw.aclose()

        return Backend(RedisState(url, prefix=prefix), advance, 0.5, cleanup)

    return open_backend


class FastStateMachine(RuleBasedStateMachine):
    """The store under test beside the model: ``{key: (value, expires_at)}`` and the feeds."""

    opener: Opener

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = Clock()
        self.backend = self.opener(self.clock)
        self.store = self.backend.state
        self.model: dict[str, tuple[bytes, float]] = {}
        self.expected: dict[str, list[bytes]] = {channel: [] for channel in SUBSCRIBED}
        self.received: dict[str, list[bytes]] = {channel: [] for channel in SUBSCRIBED}
        self.listeners = [self.loop.create_task(self._listen(channel)) for channel in SUBSCRIBED]
        for channel in SUBSCRIBED:
            self.run(self._subscribed(channel))

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    async def _listen(self, channel: str) -> None:
        async for message in self.store.subscribe(channel):
            self.received[channel].append(message)

    async def _until(self, channel: str, count: int) -> None:
        deadline = self.loop.time() + 5
        while len(self.received[channel]) < count and self.loop.time() < deadline:
            await asyncio.sleep(0.002)

    async def _subscribed(self, channel: str) -> None:
        """Publish until the subscriber hears, then drain to a marker: the feed starts empty."""
        deadline = self.loop.time() + 5
        while not self.received[channel]:
            assert self.loop.time() < deadline, f"the subscriber of {channel} never heard anything"
            await self.store.publish(channel, b"hello?")
            await asyncio.sleep(0.01)
        marker = b"ready-" + secrets.token_hex(4).encode()
        await self.store.publish(channel, marker)
        while marker not in self.received[channel]:
            assert self.loop.time() < deadline, f"the marker on {channel} never arrived"
            await asyncio.sleep(0.002)
        self.received[channel].clear()

    def teardown(self) -> None:
        for task in self.listeners:
            task.cancel()
        self.run(asyncio.gather(*self.listeners, return_exceptions=True))
        self.run(self.store.close())
        self.run(self.backend.cleanup())
        self.loop.close()

    # -- the model ---------------------------------------------------------------------------

    def live(self, key: str) -> bytes | None:
        item = self.model.get(key)
        if item is None or item[1] <= self.clock.now:
            self.model.pop(key, None)
            return None
        return item[0]

    # -- the rules ---------------------------------------------------------------------------

    @rule(key=KEYS, value=VALUES, ttl=TTLS)
    def set(self, key: str, value: bytes, ttl: int) -> None:
        self.run(self.store.set(key, value, ttl))
        self.model[key] = (value, self.clock.now + ttl)

    @rule(key=KEYS, value=VALUES, ttl=TTLS)
    def add(self, key: str, value: bytes, ttl: int) -> None:
        expected = self.live(key) is None
        assert self.run(self.store.add(key, value, ttl)) is expected
        if expected:
            self.model[key] = (value, self.clock.now + ttl)

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        assert self.run(self.store.get(key)) == self.live(key)

    @rule(key=KEYS)
    def consume(self, key: str) -> None:
        assert self.run(self.store.consume(key)) == self.live(key)
        self.model.pop(key, None)

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        self.run(self.store.delete(key))
        self.model.pop(key, None)

    @rule(key=KEYS, ttl=TTLS, amount=AMOUNTS)
    def incr(self, key: str, ttl: int, amount: int) -> None:
        current = self.live(key)
        if current is None:
            assert self.run(self.store.incr(key, ttl, amount)) == amount
            self.model[key] = (str(amount).encode(), self.clock.now + ttl)
            return
        valid = INTEGER.fullmatch(current) is not None and int(current) in INT64
        if not valid or int(current) + amount not in INT64:
            with pytest.raises(StorageError):
                self.run(self.store.incr(key, ttl, amount))
            return
        total = int(current) + amount
        assert self.run(self.store.incr(key, ttl, amount)) == total
        self.model[key] = (str(total).encode(), self.model[key][1])

    @rule(key=KEYS)
    def ttl(self, key: str) -> None:
        remaining = self.run(self.store.ttl(key))
        if self.live(key) is None:
            assert remaining is None
            return
        expected = self.model[key][1] - self.clock.now
        assert remaining is not None
        assert expected - self.backend.ttl_slack - 1e-6 <= remaining <= expected + 1e-6

    @rule(seconds=st.integers(min_value=1, max_value=4))
    def advance(self, seconds: int) -> None:
        self.clock.now += seconds
        self.run(self.backend.advance(seconds))

    @rule(channel=CHANNELS, message=st.binary(min_size=1, max_size=8))
    def publish(self, channel: str, message: bytes) -> None:
        self.run(self.store.publish(channel, message))
        if channel in self.expected:
            self.expected[channel].append(message)
        for name in SUBSCRIBED:
            self.run(self._until(name, len(self.expected[name])))
            assert self.received[name] == self.expected[name]


def _run(opener: Opener) -> None:
    machine = type("Machine", (FastStateMachine,), {"opener": staticmethod(opener)})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_memory_matches_the_model() -> None:
    _run(memory_backend)


def test_sqlite_file_matches_the_model(tmp_path: Path) -> None:
    _run(sqlite_backend(tmp_path))


def test_redis_matches_the_model(redis_url: str) -> None:
    _run(redis_backend(redis_url))
