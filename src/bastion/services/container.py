"""The authorization server's services, assembled once per process by the composition root."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from bastion.ops.audit import AuditLog
from bastion.ops.background import Background
from bastion.protocol.models import Client
from bastion.ratelimit import Limiter
from bastion.ratelimit import Rate
from bastion.ratelimit.local import LocalLimiter
from bastion.services.client_auth import ClientAuthPolicy
from bastion.services.client_auth import ClientAuthThrottle
from bastion.services.client_auth import ClientRequestLimit
from bastion.services.clients import ClientService
from bastion.services.crypto import Sealer
from bastion.services.keys import KeyPolicy
from bastion.services.keys import KeyService
from bastion.services.keys import algorithms_for
from bastion.services.metrics import ServerMetrics
from bastion.services.tokens import TokenService
from bastion.settings import AuthorizationServerSettings
from bastion.storage.open import Stores
from bastion.storage.protocols import StorageError

log = logging.getLogger("bastion.server")

#: A grant type's handler at the token endpoint: (services, authenticated client, form, now) → response.
GrantHandler = Callable[["Services", Client, Mapping[str, str], float], Awaitable[dict[str, Any]]]

_LEEWAY = 60
#: The rate-limit namespace of the clients' request rate (no ``|``: none of the gateway's).
CLIENT_REQUESTS = "authorization_server.client_requests"


@dataclass
class Services:
    """Everything the authorization server's endpoints call."""

    settings: AuthorizationServerSettings
    stores: Stores
    sealer: Sealer
    keys: KeyService
    clients: ClientService
    tokens: TokenService
    audit: AuditLog
    clock: Callable[[], float] = time.time
    #: Token-endpoint grants beyond client_credentials, by ``grant_type``.
    grant_handlers: dict[str, GrantHandler] = field(default_factory=dict)
    #: Extra members of the RFC 8414 document (the sign-in part adds its endpoints).
    metadata_extra: dict[str, Any] = field(default_factory=dict)
    #: Periodic clean-ups of expired records: ``async (now) -> rows removed``.
    purgers: list[Callable[[float], Awaitable[int]]] = field(default_factory=list)
    purge_interval: float = 600.0
    #: Each client's request rate at introspection and revocation; ``None``: unlimited.
    client_requests: ClientRequestLimit | None = None
    #: This process's counters (registered on a registry by the composition root).
    metrics: ServerMetrics = field(default_factory=ServerMetrics)

    @classmethod
    def create(
        cls,
        settings: AuthorizationServerSettings,
        stores: Stores,
        sealer: Sealer,
        audit: AuditLog,
        *,
        clock: Callable[[], float] = time.time,
        limiter: Limiter | None = None,
    ) -> Services:
        """Wire the services over opened stores (no I/O).

        ``limiter`` keeps the buckets of the clients' request rate; it belongs to the caller,
        who closes it. ``None``: this process's memory (enough for one process; ``bastion
        serve`` passes the one beside its fast state, shared by every worker).
        """
        policy = KeyPolicy(
            algorithms=algorithms_for((settings.access_token_algorithm, settings.id_token_algorithm)),
            rotation_period=settings.key_rotation_days * 86400,
            publish_delay=settings.publish_delay,
            retention=max(settings.access_token_ttl, settings.id_token_ttl) + _LEEWAY,
            jwks_max_age=settings.jwks_max_age,
        )
        keys = KeyService(stores.keys, sealer, policy, clock=clock, state=stores.state, audit=audit)
        metrics = ServerMetrics(keys, clock=clock)
        failures = settings.client_auth_throttle
        throttle = (
            ClientAuthThrottle(
                stores.state,
                ClientAuthPolicy(
                    window=failures.window,
                    per_client_address=failures.per_client_address,
                    per_address=failures.per_address,
                    per_client=failures.per_client,
                ),
                audit=audit,
                metrics=metrics,
            )
            if failures.enabled
            else None
        )
        rate = settings.client_rate_limit
        client_requests = (
            ClientRequestLimit(
                (limiter or LocalLimiter()).bind(
                    CLIENT_REQUESTS, [Rate(rate.requests, rate.per, rate.burst)]
                ),
                metrics=metrics,
                audit=audit,
            )
            if rate.enabled
            else None
        )
        services = cls(
            settings=settings,
            stores=stores,
            sealer=sealer,
            keys=keys,
            clients=ClientService(
                stores.clients,
                sealer,
                cache_ttl=settings.client_cache_ttl,
                clock=clock,
                throttle=throttle,
                audit=audit,
            ),
            tokens=TokenService(settings, keys, stores.tokens, stores.state, audit, clock=clock),
            audit=audit,
            clock=clock,
            client_requests=client_requests,
            metrics=metrics,
        )
        services.purgers.append(stores.tokens.purge_expired)
        services.clients.on_disabled.append(services.tokens.revoke_client)
        return services

    def __post_init__(self) -> None:
        self._maintenance = Background(self._maintain)

    async def purge(self) -> int:
        """Run every purger once; returns the rows removed."""
        now = self.clock()
        return sum([await purger(now) for purger in self.purgers])

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self.purge_interval)
            try:
                removed = await self.purge()
            except StorageError as exc:  # try again next round; serving goes on
                log.warning("purging expired records failed: %s", exc)
            else:
                if removed:
                    log.info("purged %d expired records", removed)

    async def start(self) -> None:
        """Load keys (creating the first ones), start background refreshes and clean-ups."""
        await self.keys.load()
        await self.keys.ensure()
        self.keys.start()
        self.audit.start()
        self._maintenance.start()

    async def close(self) -> None:
        """Stop background work and flush the audit log (stores are closed by their owner)."""
        await self._maintenance.stop()
        await self.keys.close()
        await self.audit.close()
