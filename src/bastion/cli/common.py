"""What every command shares: the settings of this invocation and turning failures into messages."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Coroutine
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any
from typing import TypeVar

import click

from bastion.cli.config import ConfigError
from bastion.cli.config import load_settings
from bastion.cli.context import BastionError
from bastion.cli.context import open_services
from bastion.services.clients import ClientError
from bastion.services.container import Services
from bastion.services.crypto import SealError
from bastion.services.users import UserError
from bastion.settings import Settings
from bastion.storage.audit_protocols import rfc3339
from bastion.storage.protocols import Conflict
from bastion.storage.protocols import NotFound
from bastion.storage.protocols import StorageError

T = TypeVar("T")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")


def duration_seconds(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``2d``, ``1w`` as seconds.

    Raises:
        ValueError: anything else.
    """
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 90s, 15m, 1h or 2d")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def when(ts: float | None) -> str:
    """The one time format of every command's output: RFC 3339 UTC to the second
    (``2025-01-31T12:00:00Z``); ``-`` for none."""
    return "-" if ts is None else rfc3339(ts, "seconds")


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Rows as columns aligned under ``header`` (each as wide as its widest cell)."""
    lines = [tuple(header), *(tuple(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]


def settings_from(ctx: click.Context) -> Settings:
    """The settings of this invocation, loaded once from ``--config`` and the environment."""
    obj = ctx.find_root().ensure_object(dict)
    if "settings" not in obj:
        try:
            obj["settings"], obj["config_path"] = load_settings(obj.get("config"))
        except ConfigError as exc:
            raise BastionError(str(exc)) from None
    settings: Settings = obj["settings"]
    return settings


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; a refused request or an unreachable store becomes a one-line error."""
    try:
        return asyncio.run(coro)
    except (ClientError, UserError, Conflict, NotFound, SealError) as exc:
        raise click.ClickException(str(exc)) from None
    except StorageError as exc:
        raise click.ClickException(
            f"{exc}. Is the database reachable? Check [storage] in the config."
        ) from None


def with_services(ctx: click.Context, action: Callable[[Services], Awaitable[T]]) -> T:
    """Open the services of this invocation, run ``action`` on them, close them."""
    settings = settings_from(ctx)

    async def go() -> T:
        async with open_services(settings) as services:
            return await action(services)

    return run(go())


def asgi_server(app: Any, *, lifespan: bool) -> Any:
    """A uvicorn server for ``app`` as every Bastion listener runs one: httptools, no access log
    or ``Server`` header of uvicorn's own, client addresses as the socket gives them (trusted
    proxies are Bastion's to resolve), ten seconds to finish requests at shutdown. Serve it with
    ``server.serve(sockets=[listener])``."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            app,
            http="httptools",
            lifespan="on" if lifespan else "off",
            access_log=False,
            log_level="warning",
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=10,
        )
    )
    # The process owns SIGINT and SIGTERM (its loop's handlers stop every server it runs). Left
    # to itself, each uvicorn server would take them over while it serves and raise them again
    # once stopped: with several servers in one loop, a Ctrl-C came back as a KeyboardInterrupt
    # in the middle of the shutdown, and a lifespan cancelled with a traceback.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    return server
