"""The bans feed (:class:`bastion.gateway.bans.BanFeed`): healthy path between two followers of
one store, and the fault path — Redis killed and restarted empty while bans are made and lifted
— on a private ``redis-server``, with the durable record on SQLite."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from pathlib import Path

import pytest

from bastion.gateway.bans import BanBook
from bastion.gateway.bans import BanFeed
from bastion.gateway.bans import BanSet
from bastion.storage.ban_protocols import Ban
from bastion.storage.fast.redis import RedisState
from bastion.storage.open import Stores
from bastion.storage.open import open_stores
from bastion.storage.sql.migrate import migrate
from tests.private_redis import PrivateRedis

pytestmark = pytest.mark.anyio


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.02)


@pytest.fixture
async def redis_stores(tmp_path: Path) -> AsyncIterator[tuple[Stores, PrivateRedis]]:
    redis = PrivateRedis(tmp_path)
    stores = open_stores(f"sqlite:///{tmp_path / 'bastion.db'}", redis.url)
    await migrate(stores.db)
    try:
        yield stores, redis
    finally:
        await stores.close()
        redis.kill()


def ban(network: str, seconds: float = 600) -> Ban:
    now = time.time()
    return Ban(network, "test", "manual", now, now + seconds)


async def test_bans_reach_every_follower_and_survive_a_redis_restart(
    redis_stores: tuple[Stores, PrivateRedis],
) -> None:
    stores, redis = redis_stores
    book = BanBook(stores.bans, stores.state, None)
    await book.ban(ban("192.0.2.1"))  # before the followers start: caught up at start
    # A second process's view of the same stores.
    other_state = RedisState(redis.url)
    feeds = [
        BanFeed(BanSet(), stores.state, stores.bans, backoff=0.05),
        BanFeed(BanSet(), other_state, stores.bans, backoff=0.05),
    ]
    for feed in feeds:
        feed.start()
    try:
        await eventually(lambda: all(feed.healthy for feed in feeds))
        assert all(feed.bans.banned("192.0.2.1") for feed in feeds)

        await book.ban(ban("192.0.2.2"))
        await eventually(lambda: all(feed.bans.banned("192.0.2.2") for feed in feeds), timeout=2)

        redis.kill()
        await eventually(lambda: not any(feed.healthy for feed in feeds))
        # Bans held stay enforced while the feed is down.
        assert all(feed.bans.banned("192.0.2.1") for feed in feeds)
        # Made and lifted while Redis is down: only the durable record hears of it.
        await stores.bans.put_ban(ban("192.0.2.3"))
        assert await stores.bans.remove_ban("192.0.2.1") is not None
        redis.start()  # empty: nothing of the old keys or subscriptions survived
        await eventually(lambda: all(feed.healthy for feed in feeds))
        for feed in feeds:
            assert feed.bans.banned("192.0.2.3")
            assert not feed.bans.banned("192.0.2.1")
            assert feed.bans.banned("192.0.2.2")
            assert feed.follower.drops >= 1

        await book.lift("192.0.2.2", "done")  # the feed works again after the restart
        await eventually(lambda: not any(feed.bans.banned("192.0.2.2") for feed in feeds), timeout=2)
    finally:
        for feed in feeds:
            await feed.stop()
        await other_state.close()


async def test_an_expired_ban_ends_without_a_message(tmp_path: Path) -> None:
    stores = open_stores(f"sqlite:///{tmp_path / 'bastion.db'}", f"sqlite:///{tmp_path / 'state.db'}")
    await migrate(stores.db)
    feed = BanFeed(BanSet(), stores.state, stores.bans, backoff=0.05)
    feed.start()
    try:
        await eventually(lambda: feed.healthy)
        await BanBook(stores.bans, stores.state, None).ban(ban("192.0.2.9", seconds=0.3))
        await eventually(lambda: feed.bans.banned("192.0.2.9"), timeout=2)
        await eventually(lambda: not feed.bans.banned("192.0.2.9"), timeout=2)
        assert await stores.bans.active_bans(time.time()) == []
    finally:
        await feed.stop()
        await stores.close()
