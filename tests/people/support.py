"""Shared test helpers for the people tests: real services over real stores."""

from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher

from bastion.ops.audit import AuditEvent
from bastion.ops.audit import AuditLog
from bastion.protocol.models import Client
from bastion.services.container import Services
from bastion.services.crypto import Sealer
from bastion.services.users import Passwords
from bastion.settings import AuthorizationServerSettings
from bastion.storage.fast.memory import MemoryState
from bastion.storage.fast.sqlite import SQLiteState
from bastion.storage.open import Stores
from bastion.storage.protocols import FastState

#: Real argon2id with small parameters, so tests stay fast.
CHEAP_PASSWORDS = Passwords(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
KEK = b"k" * 48
ISSUER = "http://127.0.0.1:8000"
#: Fast-state backends: the embedded default (a SQLite file) first, then memory and Redis.
STATES = ("sqlite", "memory", "redis")


def fast_state(kind: str, tmp_path: Path, redis_url: str = "") -> FastState:
    """A fresh fast-state store: ``sqlite`` (a file in ``tmp_path``), ``memory`` or ``redis``
    (keys under a prefix of this test's own)."""
    if kind == "sqlite":
        return SQLiteState(tmp_path / "state.db")
    if kind == "memory":
        return MemoryState()
    from bastion.storage.fast.redis import RedisState

    return RedisState(redis_url, prefix=f"test:{secrets.token_hex(6)}:")


def with_state(stores: Stores, state: FastState) -> Stores:
    """``stores`` with another fast-state store (``open_stores`` opened one for its URL)."""
    return dataclasses.replace(stores, state=state)


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
    events: list[AuditEvent]

    def named(self, name: str) -> list[AuditEvent]:
        return [event for event in self.events if event.type == name]


async def build_world(stores: Stores, tmp_path: Path, **settings: Any) -> World:
    clock = Clock()
    audit = AuditLog(tmp_path / "audit.log", clock=clock)
    events: list[AuditEvent] = []
    audit.listeners.append(events.append)
    config = AuthorizationServerSettings(issuer=ISSUER, **settings)
    services = Services.create(config, stores, Sealer(KEK), audit, clock=clock)
    await services.keys.load()
    await services.keys.ensure()
    return World(services, clock, events)


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
