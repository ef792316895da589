"""Compose the gateway: settings → secrets → verifiers fed by the revocation feed → server."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

import orjson

from bastion.gateway.app import Gateway
from bastion.gateway.app import IssuerVerifier
from bastion.gateway.app import ServerFactory
from bastion.gateway.app import create_gateway
from bastion.gateway.app import token_verifier_factory
from bastion.gateway.contract import Handler
from bastion.gateway.limits import EngineLimits
from bastion.gateway.observe import AccessLog
from bastion.gateway.server import GatewayServer
from bastion.gateway.settings import GatewaySettings
from bastion.gateway.tls import make_server_ssl_context
from bastion.services.tokens import REVOCATION_CHANNEL
from bastion.services.tokens import revoked_key
from bastion.settings import Settings
from bastion.storage.open import Stores
from bastion.storage.protocols import FastState


class StateRevocations:
    """Revoked token ids from the shared fast-state store (what the authorization server writes)."""

    def __init__(self, state: FastState) -> None:
        self._state = state

    async def is_revoked(self, jti: str) -> bool:
        return await self._state.get(revoked_key(jti)) is not None


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


async def _follow_revocations(state: FastState, verifiers: list[IssuerVerifier]) -> None:
    async for message in state.subscribe(REVOCATION_CHANNEL):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            event = orjson.loads(message)
            for verifier in verifiers:
                verifier.validator.revoke(str(event["jti"]), float(event["exp"]))


def for_worker(settings: GatewaySettings, worker: int) -> GatewaySettings:
    """Worker ``n`` serves its metrics on the admin port plus ``n``: each process's counters are
    its own, so each process gets a scrape target (the public listener is shared)."""
    if worker == 0 or settings.admin_listen is None:
        return settings
    host, _, port = settings.admin_listen.rpartition(":")
    return settings.model_copy(update={"admin_listen": f"{host}:{int(port) + worker}"})


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


_LISTEN_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


class RunningGateway:
    """The gateway and its revocation follower, closed together."""

    def __init__(self, gateway: Gateway, follower: asyncio.Task[None], worker: int) -> None:
        self.gateway = gateway
        self._follower = follower
        self._worker = worker

    async def reload(self, settings: GatewaySettings) -> None:
        await self.gateway.reload(for_worker(settings, self._worker))

    async def close(self) -> None:
        self._follower.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._follower
        await self.gateway.close()


async def start_gateway(
    settings: Settings, stores: Stores, *, worker: int = 0, listener: socket.socket | None = None
) -> RunningGateway:
    """Build and start the gateway of ``settings`` (which must have a ``[gateway]`` section).

    Args:
        settings: The whole settings tree.
        stores: The process's stores (revocations come from the fast state).
        worker: The worker number (its admin listener is ``admin_listen`` plus it).
        listener: The public listening socket bound by the supervisor; ``None`` binds
            ``gateway.listen`` here.

    Raises:
        ListenError: the admin listener's address cannot be listened on.
    """
    if settings.gateway is None:
        raise ValueError("no [gateway] section")
    config = for_worker(settings.gateway, worker)
    verifiers: list[IssuerVerifier] = []
    ssl_context = None
    if config.tls_cert and config.tls_key:
        ssl_context = make_server_ssl_context(config.tls_cert, config.tls_key)
    gateway = create_gateway(
        config,
        verifiers=token_verifier_factory(
            introspection_secrets=introspection_secrets(config),
            revocation=StateRevocations(stores.state),
            on_created=verifiers.append,
        ),
        ssl_context=ssl_context,
        access_log=access_log_for(config, settings.data_dir),
        server_factory=None if listener is None else listener_server_factory(config, listener),
    )
    follower = asyncio.get_running_loop().create_task(_follow_revocations(stores.state, verifiers))
    try:
        await gateway.start()
    except OSError as exc:
        follower.cancel()
        await gateway.close()
        # The admin listener starts first, so a bind failure with no admin port is its own.
        if exc.errno in _LISTEN_ERRNOS and config.admin_listen is not None and gateway.admin_port is None:
            from bastion.cli.listen import listen_error

            raise listen_error(config.admin_listen, "gateway.admin_listen", exc) from None
        raise
    return RunningGateway(gateway, follower, worker)
