"""The admin API through its real ASGI app, beside the public app, over the stores of
``tests/conftest.py``: the embedded default (SQLite files) and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import httpx2 as httpx
import pytest

from bastion.gateway.bans import BanBook
from bastion.gateway.bans import parse_network
from bastion.ops.audit import AuditEvent
from bastion.ops.audit import AuditLog
from bastion.server.admin.app import create_admin_app
from bastion.server.admin.routing import AdminContext
from bastion.server.app import create_app
from bastion.services.container import Services
from bastion.services.crypto import Sealer
from bastion.settings import AuthorizationServerSettings
from bastion.storage.open import Stores

ISSUER = "http://127.0.0.1:8000"
ADMIN = "http://127.0.0.1:8001"


@dataclass
class Clock:
    now: float = field(default_factory=time.time)

    def __call__(self) -> float:
        return self.now


@dataclass
class Admin:
    """The admin API and the public app over one set of services, with an admin token."""

    services: Services
    public: httpx.AsyncClient
    api: httpx.AsyncClient
    events: list[AuditEvent]
    clock: Clock
    ops_id: str = ""
    token: str = ""

    async def issue(self, client_id: str, secret: str, scope: str = "bastion:admin") -> httpx.Response:
        return await self.public.post(
            "/token", data={"grant_type": "client_credentials", "scope": scope}, auth=(client_id, secret)
        )

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


@pytest.fixture
async def admin(stores: Stores, tmp_path: Path) -> AsyncIterator[Admin]:
    clock = Clock()
    audit = AuditLog(tmp_path / "audit.log", store=stores.audit, clock=clock)
    events: list[AuditEvent] = []
    audit.listeners.append(events.append)
    services = Services.create(
        AuthorizationServerSettings(issuer=ISSUER, client_cache_ttl=0),
        stores,
        Sealer(b"k" * 48),
        audit,
        clock=clock,
    )
    await services.keys.load()
    await services.keys.ensure()
    context = AdminContext(services, BanBook(stores.bans, stores.state, audit), parse_network, 16 * 1024)
    public = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(services)), base_url=ISSUER)
    api = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_admin_app(context), client=("127.0.0.1", 40000)),
        base_url=ADMIN,
    )
    built = Admin(services, public, api, events, clock)
    ops, secret = await services.clients.create(name="ops", scopes=["bastion:admin"], client_id="ops")
    assert secret is not None
    built.ops_id = ops.client_id
    built.token = (await built.issue(ops.client_id, secret)).json()["access_token"]
    try:
        yield built
    finally:
        await public.aclose()
        await api.aclose()
        await audit.close()
