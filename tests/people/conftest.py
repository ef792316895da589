from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bastion.storage.open import Stores
from bastion.storage.open import open_stores
from bastion.storage.sql.migrate import migrate
from bastion.storage.sql.people import PeopleStores

from .support import STATES
from .support import World
from .support import build_world
from .support import fast_state
from .support import with_state


@pytest.fixture
def people(stores: Stores) -> PeopleStores:
    return PeopleStores.open(stores.db)


@pytest.fixture
async def world(stores: Stores, tmp_path: Path) -> AsyncIterator[World]:
    built = await build_world(stores, tmp_path)
    yield built
    await built.services.audit.close()


async def _sqlite_world(tmp_path: Path, state: str, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    redis_url = request.getfixturevalue("redis_url") if state == "redis" else ""
    opened = open_stores(f"sqlite:///{tmp_path / 'bastion.db'}", "memory://")
    opened = with_state(opened, fast_state(state, tmp_path, redis_url))
    await migrate(opened.db)
    built = await build_world(opened, tmp_path)
    yield built
    await built.services.audit.close()
    await opened.close()


@pytest.fixture
async def sqlite_world(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    """The embedded default: a SQLite database and a SQLite file for fast state."""
    async for built in _sqlite_world(tmp_path, "sqlite", request):
        yield built


@pytest.fixture(params=STATES)
async def state_world(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    """A SQLite database with each fast-state backend: SQLite file, memory, Redis."""
    async for built in _sqlite_world(tmp_path, request.param, request):
        yield built
