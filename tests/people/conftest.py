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
