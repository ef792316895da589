"""Compose the backend-for-frontend: settings → client secret → one aiohttp session → app."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from bastion.cli.common import asgi_server
from bastion.settings import BFFSettings
from bastion.storage.protocols import FastState

#: Every call to the authorization server and the gateway: connect within 3 s, whole exchange
#: within 30 s (an API call through the gateway may take a while).
TIMEOUT = aiohttp.ClientTimeout(total=30.0, connect=3.0, sock_read=30.0)


def bff_secret(settings: BFFSettings) -> str:
    """The BFF's client secret, from the environment or a file (never from ``bastion.toml``).

    Raises:
        ValueError: the variable is unset or empty, or the file cannot be read.
    """
    if settings.client_secret_env is not None:
        value = os.environ.get(settings.client_secret_env, "")
        if not value:
            raise ValueError(f"bff: environment variable {settings.client_secret_env} is not set")
        return value
    path = Path(str(settings.client_secret_file))
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"bff: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise ValueError(f"bff: {path} is empty")
    return value


@dataclass
class RunningBFF:
    """A BFF serving on its listener; :meth:`close` stops it."""

    server: Any
    task: asyncio.Task[Any]
    http: aiohttp.ClientSession

    async def close(self) -> None:
        """Stop serving, then close the shared HTTP session."""
        self.server.should_exit = True
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self.task, 10)
        await self.http.close()


async def start_bff(
    settings: BFFSettings, state: FastState, listener: socket.socket, *, registry: CollectorRegistry
) -> RunningBFF:
    """Serve the BFF app on ``listener``, its sessions in ``state``, counting on ``registry``."""
    from bastion.bff.app import create_app
    from bastion.bff.metrics import BffMetrics

    metrics = BffMetrics()
    registry.register(metrics)

    http = aiohttp.ClientSession(
        timeout=TIMEOUT,
        cookie_jar=aiohttp.DummyCookieJar(),  # the BFF keeps no cookies of the services it calls
        connector=aiohttp.TCPConnector(limit=200, limit_per_host=100),
    )
    app = create_app(settings, state=state, http=http, client_secret=bff_secret(settings), metrics=metrics)
    server = asgi_server(app, lifespan=False)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[listener]))
    return RunningBFF(server=server, task=task, http=http)
