from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bastion.storage.open import Stores
from bastion.storage.open import open_stores
from bastion.storage.sql.migrate import migrate
from bastion.storage.sql.people import PeopleStores

from .support import World
from .support import build_world


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgres"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    """Migrated durable stores on SQLite and on PostgreSQL (a fresh schema per test)."""
    if request.param == "sqlite":
        opened = open_stores(f"sqlite:///{tmp_path / 'bastion.db'}", "memory://")
    else:
        url, schema = request.getfixturevalue("postgres_schema")
        opened = open_stores(url, "memory://", schema=schema)
    await migrate(opened.db)
    yield opened
    await opened.close()


@pytest.fixture
def people(stores: Stores) -> PeopleStores:
    return PeopleStores.open(stores.db)


@pytest.fixture
async def world(stores: Stores, tmp_path: Path) -> AsyncIterator[World]:
    built = await build_world(stores, tmp_path)
    yield built
    await built.services.audit.close()


@pytest.fixture
async def sqlite_world(tmp_path: Path) -> AsyncIterator[World]:
    opened = open_stores(f"sqlite:///{tmp_path / 'bastion.db'}", "memory://")
    await migrate(opened.db)
    built = await build_world(opened, tmp_path)
    yield built
    await built.services.audit.close()
    await opened.close()
