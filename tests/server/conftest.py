from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from bastion.ops.audit import AuditEvent
from bastion.ops.audit import AuditLog
from bastion.server.app import create_app
from bastion.services.container import Services
from bastion.services.crypto import Sealer
from bastion.settings import AuthorizationServerSettings
from bastion.storage.open import open_stores
from bastion.storage.sql.engine import Database
from bastion.storage.sql.migrate import migrate

ISSUER = "http://127.0.0.1:8000"


class Server:
    """The authorization server app over real SQLite and in-memory fast state."""

    def __init__(self, tmp: Path) -> None:
        self.stores = open_stores(f"sqlite:///{tmp / 'b.db'}", "memory://")
        self.events: list[AuditEvent] = []
        self.audit = AuditLog(tmp / "audit.log")
        self.audit.listeners.append(self.events.append)
        self.services = Services.create(
            AuthorizationServerSettings(issuer=ISSUER), self.stores, Sealer(b"k" * 40), self.audit
        )
        self.app = create_app(self.services)


async def _migrate(url: str) -> None:
    db = Database(url)
    try:
        await migrate(db)
    finally:
        await db.close()


@pytest.fixture
def server(tmp_path: Path) -> Server:
    asyncio.run(_migrate(f"sqlite:///{tmp_path / 'b.db'}"))
    return Server(tmp_path)


@pytest.fixture
def client(server: Server) -> Iterator[TestClient]:
    with TestClient(server.app, base_url=ISSUER) as test_client:
        yield test_client
        test_client.portal.call(server.stores.close)  # type: ignore[union-attr]


def register(client: TestClient, server: Server, **kwargs: Any) -> tuple[str, str | None]:
    """Create a client through the service (on the app's loop) and return (id, secret)."""
    kwargs.setdefault("name", "svc")
    kwargs.setdefault("scopes", ("read", "write"))
    created, secret = client.portal.call(lambda: server.services.clients.create(**kwargs))  # type: ignore[union-attr]
    return created.client_id, secret
