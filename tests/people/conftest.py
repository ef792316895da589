from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from bastion.ops.audit import AuditLog
from bastion.protocol.models import Client
from bastion.services.container import Services
from bastion.services.crypto import Sealer
from bastion.services.users import Passwords
from bastion.settings import AuthorizationServerSettings
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


# -- services ------------------------------------------------------------------------------


#: Real argon2id with small parameters, so tests stay fast.
CHEAP_PASSWORDS = Passwords(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
KEK = b"k" * 48
ISSUER = "http://127.0.0.1:8000"


@dataclass
class Clock:
    """A settable clock (the services take time as a parameter)."""

    now: float = field(default_factory=time.time)

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    """Services over real stores, the clock they read, and the audit events they emitted."""

    services: Services
    clock: Clock
    events: list[dict[str, Any]]

    def named(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["event"] == name]


async def build_world(stores: Stores, tmp_path: Path, **settings: Any) -> World:
    clock = Clock()
    audit = AuditLog(tmp_path / "audit.log", clock=clock)
    events: list[dict[str, Any]] = []
    audit.listeners.append(events.append)
    config = AuthorizationServerSettings(issuer=ISSUER, **settings)
    services = Services.create(config, stores, Sealer(KEK), audit, clock=clock)
    await services.keys.load()
    await services.keys.ensure()
    return World(services, clock, events)


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


async def web_client(services: Services, **overrides: Any) -> Client:
    options: dict[str, Any] = {
        "name": "Shop",
        "public": True,
        "grant_types": ["authorization_code", "refresh_token"],
        "scopes": ["openid", "profile", "email", "offline_access", "orders:read", "orders:write"],
        "redirect_uris": ["https://app.example/cb"],
        "post_logout_redirect_uris": ["https://app.example/bye"],
        "client_id": "web",
    }
    options.update(overrides)
    client, _ = await services.clients.create(**options)
    return client
