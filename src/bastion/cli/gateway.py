"""Compose the gateway: settings → secrets → verifiers fed by the revocation and key feeds → server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import sys
import time
from collections.abc import Callable
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from bastion.cli.bans import GatewayBans
from bastion.gateway.app import Gateway
from bastion.gateway.app import ServerFactory
from bastion.gateway.app import create_gateway
from bastion.gateway.app import token_verifier_factory
from bastion.gateway.contract import Handler
from bastion.gateway.limits import EngineLimits
from bastion.gateway.observe import AccessLog
from bastion.gateway.server import GatewayServer
from bastion.gateway.settings import GatewaySettings
from bastion.gateway.tls import make_server_ssl_context
from bastion.ops.audit import AuditLog
from bastion.ops.feeds import FeedMetrics
from bastion.ops.feeds import Follower
from bastion.ratelimit import Limiter
from bastion.services.keys import KEYS_CHANNEL
from bastion.services.tokens import REVOCATION_CHANNEL
from bastion.services.tokens import revoked_key
from bastion.services.tokens import warm_revocations
from bastion.settings import Settings
from bastion.storage.open import Stores
from bastion.storage.protocols import FastState
from bastion.tokens import IssuerVerifier


class StateRevocations:
    """Revoked token ids and disabled clients, as the gateway's validators check them on a miss.

    While the revocation feed is healthy, the fast-state store answers (what the authorization
    server writes there, re-warmed by every catch-up). While it is down, the store may have been
    reset (a Redis restart without persistence, a wiped state file), so the durable record, the
    truth, is asked as well; a store that cannot answer makes the validation fail closed (503).
    """

    def __init__(self, state: FastState, stores: Stores | None = None) -> None:
        self._state = state
        self._stores = stores
        #: Set by the composition root: whether the revocation feed is live and caught up.
        self.feed_healthy: Callable[[], bool] = lambda: True

    async def is_revoked(self, jti: str) -> bool:
        if await self._state.get(revoked_key(jti)) is not None:
            return True
        if self._stores is not None and not self.feed_healthy():
            return await self._stores.tokens.is_jti_revoked(jti)
        return False

    async def client_disabled_before(self, client_id: str) -> float | None:
        if self._stores is None or self.feed_healthy():
            return None  # the feed's announcements reach the validators' own lists
        client = await self._stores.clients.get_client(client_id)
        return client.updated_at if client is not None and client.disabled else None


class GatewayFeeds:
    """The gateway's followers of the revocation and signing-key feeds, feeding every verifier.

    Policy while either feed is down (dropped, reconnecting, catching up, or not yet started):
    validators do not trust their verified-token caches: each hit is re-checked against
    :class:`StateRevocations` (the fast store, then the durable record), and a token that cannot
    be checked is refused with 503. Once both feeds are subscribed and caught up, hits are
    trusted again.
    """

    def __init__(self, stores: Stores, revocations: StateRevocations, registry: CollectorRegistry) -> None:
        self._stores = stores
        self.verifiers: list[IssuerVerifier] = []
        metrics = FeedMetrics(registry)
        #: Shared with the other feeds of the process (one metric family per registry).
        self.metrics = metrics
        self.revocations = Follower(
            "revocations",
            stores.state,
            REVOCATION_CHANNEL,
            self._on_revocation,
            catch_up=self._catch_up_revocations,
            on_health=self._health,
            metrics=metrics,
        )
        self.keys = Follower(
            "keys",
            stores.state,
            KEYS_CHANNEL,
            self._on_key,
            catch_up=self._catch_up_keys,
            on_health=self._health,
            metrics=metrics,
        )
        revocations.feed_healthy = lambda: self.revocations.healthy
        self._tasks: set[asyncio.Task[object]] = set()

    @property
    def healthy(self) -> bool:
        """Both feeds are subscribed and caught up."""
        return self.revocations.healthy and self.keys.healthy

    def add(self, verifier: IssuerVerifier) -> None:
        """Feed ``verifier`` from now on (built at start and on every reload)."""
        verifier.validator.cache_trusted = self.healthy
        self.verifiers.append(verifier)

    def _health(self, _: bool) -> None:
        healthy = self.healthy
        for verifier in self.verifiers:
            verifier.validator.cache_trusted = healthy

    def start(self) -> None:
        self.revocations.start()
        self.keys.start()

    async def stop(self) -> None:
        await self.revocations.stop()
        await self.keys.stop()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- revocations --------------------------------------------------------------------------

    def _on_revocation(self, message: bytes) -> None:
        event = orjson.loads(message)
        if "jti" in event:
            jti, exp = str(event["jti"]), float(event["exp"])
            for verifier in self.verifiers:
                verifier.validator.revoke(jti, exp)
        elif "client_id" in event:
            client_id, before, until = str(event["client_id"]), float(event["before"]), float(event["exp"])
            for verifier in self.verifiers:
                verifier.validator.revoke_client(client_id, before, until)

    async def _catch_up_revocations(self) -> None:
        """Read the durable record into every validator and re-warm the fast store from it."""
        now = time.time()
        jtis = await self._stores.tokens.revoked_jtis(now)
        clients = [c for c in await self._stores.clients.list_clients() if c.disabled]
        for verifier in self.verifiers:
            for jti, until in jtis:
                verifier.validator.revoke(jti, until)
            for client in clients:
                verifier.validator.revoke_client(client.client_id, client.updated_at)
        await warm_revocations(self._stores.state, jtis, now)

    # -- signing keys -------------------------------------------------------------------------

    def _on_key(self, message: bytes) -> None:
        event, kid = key_event(message)
        for verifier in self.verifiers:
            if event == "revoked":
                verifier.validator.forget_key(kid)
            else:
                self._spawn(verifier.validator.refresh_keys())

    async def _catch_up_keys(self) -> None:
        """Refetch every issuer's JWKS (rate-limited by each validator's cooldown)."""
        for verifier in list(self.verifiers):
            await verifier.validator.refresh_keys()

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(_settled(self._tasks))


def _settled(tasks: set[asyncio.Task[object]]) -> Callable[[asyncio.Task[object]], None]:
    def done(task: asyncio.Task[object]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # an early refresh that failed: the next miss or catch-up refetches

    return done


def key_event(message: bytes) -> tuple[str, str]:
    """``(event, kid)`` of a message on the keys channel: ``{"event": "created" | "revoked",
    "kid": ...}``, or the bare ``kid`` (older publishers), meaning "created".

    Raises:
        ValueError: a JSON message of another shape.
    """
    if message.startswith(b"{"):
        body = orjson.loads(message)
        event, kid = body.get("event"), body.get("kid")
        if event not in ("created", "revoked") or not isinstance(kid, str):
            raise ValueError(f"not a key event: {message[:100]!r}")
        return str(event), kid
    return "created", message.decode()


def introspection_secrets(settings: GatewaySettings) -> dict[str, str]:
    """Client secrets of issuers checked by introspection, from the environment or files."""
    secrets: dict[str, str] = {}
    for issuer in settings.issuers:
        config = issuer.introspection
        if config is None:
            continue
        if config.client_secret_env is not None:
            value = os.environ.get(config.client_secret_env)
            if not value:
                raise ValueError(
                    f"gateway issuer {issuer.issuer}: environment variable {config.client_secret_env} is not set"
                )
        else:
            path = Path(str(config.client_secret_file))
            try:
                value = path.read_text().strip()
            except OSError as exc:
                raise ValueError(
                    f"gateway issuer {issuer.issuer}: cannot read {path}: {exc.strerror}"
                ) from None
        secrets[issuer.issuer] = value
    return secrets


def access_log_for(settings: GatewaySettings, data_dir: Path) -> AccessLog:
    """The access log writer the settings ask for."""
    target = settings.access_log
    if target is None:
        stream: Any = None
    elif target == "-":
        stream = sys.stdout.buffer
    else:
        path = Path(target) if Path(target).is_absolute() else data_dir / target
        path.parent.mkdir(parents=True, exist_ok=True)
        stream = path.open("ab")
    return AccessLog(
        stream, flush_lines=settings.access_log_flush_lines, flush_interval=settings.access_log_flush_interval
    )


def in_server(settings: GatewaySettings) -> GatewaySettings:
    """The gateway as a worker of ``bastion serve`` runs it: without an admin listener of its
    own (the server's metrics listener serves every component and every worker)."""
    return settings.model_copy(update={"admin_listen": None})


class _ListenerServer(GatewayServer):
    """The engine server on a socket the supervisor bound (its ``host``/``port`` are ignored)."""

    def __init__(
        self, handler: Handler, *, limits: EngineLimits, ssl: ssl.SSLContext | None, listener: socket.socket
    ) -> None:
        super().__init__(handler, limits=limits, ssl=ssl)
        self._listener = listener

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        reuse_port: bool = True,
        sock: socket.socket | None = None,
        backlog: int = 1024,
    ) -> None:
        """Serve on the supervisor's socket."""
        await super().start(sock=self._listener, backlog=backlog)


def listener_server_factory(settings: GatewaySettings, listener: socket.socket) -> ServerFactory:
    """The engine's server for ``settings.limits``, accepting on ``listener``."""
    limits = EngineLimits(**settings.limits.model_dump())

    def factory(handler: Handler, ssl_context: ssl.SSLContext | None) -> GatewayServer:
        return _ListenerServer(handler, limits=limits, ssl=ssl_context, listener=listener)

    return factory


def open_limiter(state_url: str) -> Limiter:
    """Where the gateway's rate-limit buckets live, beside the fast state of ``state_url``:
    Redis (shared by every gateway), the SQLite state file (shared by the workers of this
    machine), or this process's memory for ``memory://``."""
    if state_url.startswith("sqlite:///"):
        from bastion.ratelimit.sqlite import SQLiteLimiter

        return SQLiteLimiter(state_url.removeprefix("sqlite:///"))
    if state_url.startswith(("redis://", "rediss://", "unix://")):
        from bastion.ratelimit.redis import RedisLimiter

        return RedisLimiter(state_url)
    from bastion.ratelimit.local import LocalLimiter

    return LocalLimiter()


class RunningGateway:
    """The gateway and its feed followers, closed together."""

    def __init__(
        self,
        gateway: Gateway,
        feeds: GatewayFeeds,
        limiter: Limiter | None = None,
        bans: GatewayBans | None = None,
    ) -> None:
        self.gateway = gateway
        self.feeds = feeds
        self._limiter = limiter
        self.bans = bans

    async def reload(self, settings: GatewaySettings) -> None:
        await self.gateway.reload(in_server(settings))

    async def close(self) -> None:
        await self.feeds.stop()
        if self.bans is not None:
            await self.bans.feed.stop()
        await self.gateway.close()
        if self._limiter is not None:
            await self._limiter.close()
        if self.bans is not None:
            await self.bans.guard.close()


async def start_gateway(
    settings: Settings,
    stores: Stores,
    *,
    registry: CollectorRegistry,
    listener: socket.socket | None = None,
    audit: AuditLog | None = None,
) -> RunningGateway:
    """Build and start the gateway of ``settings`` (which must have a ``[gateway]`` section).

    Args:
        settings: The whole settings tree.
        stores: The process's stores (revocations come from the fast state).
        registry: Where the gateway counts; the caller serves it (the gateway opens no admin
            listener of its own, see :func:`in_server`).
        listener: The public listening socket bound by the supervisor; ``None`` binds
            ``gateway.listen`` here.
        audit: Where automatic bans are audited (``ip.banned``); started here.

    Raises:
        ListenError: the admin listener's address cannot be listened on.
    """
    if settings.gateway is None:
        raise ValueError("no [gateway] section")
    config = in_server(settings.gateway)
    ssl_context = None
    if config.tls_cert and config.tls_key:
        ssl_context = make_server_ssl_context(config.tls_cert, config.tls_key)
    revocations = StateRevocations(stores.state, stores)
    feeds = GatewayFeeds(stores, revocations, registry)
    limiter = open_limiter(settings.resolved_state_url())
    bans = None
    if config.bans.enabled:
        bans = GatewayBans(config, stores, registry=registry, feed_metrics=feeds.metrics, audit=audit)
    gateway = create_gateway(
        config,
        verifiers=token_verifier_factory(
            introspection_secrets=introspection_secrets(config),
            revocation=revocations,
            on_created=feeds.add,
        ),
        ssl_context=ssl_context,
        access_log=access_log_for(config, settings.data_dir),
        server_factory=None if listener is None else listener_server_factory(config, listener),
        registry=registry,
        rate_limiter=limiter,
        bans=bans.guard if bans is not None else None,
        audit=audit,
    )
    feeds.start()
    if bans is not None:
        bans.start()
    if audit is not None:
        audit.start()
    try:
        await gateway.start()
    except BaseException as exc:
        await feeds.stop()
        await limiter.close()
        if bans is not None:
            await bans.stop()
        if isinstance(exc, OSError):
            await gateway.close()
        raise
    return RunningGateway(gateway, feeds, limiter, bans)
