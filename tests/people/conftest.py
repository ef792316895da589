from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bastion.storage.open import Stores
from bastion.storage.open import open_stores
from bastion.storage.sql.migrate import migrate
from bastion.storage.sql.people import PeopleStores


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
