"""What the shop's services share: a JSON file store, the answer headers, body checks."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp
from starlette.types import Message
from starlette.types import Receive
from starlette.types import Scope
from starlette.types import Send

#: Every answer of a shop service names the service, so the page can tell who decided.
SERVICE_HEADER = "x-shop-service"


class JsonFile:
    """A small JSON document on disk, replaced atomically on every change (a crash leaves the
    old or the new file, never half of one). One process owns it; ``update`` is serialised."""

    def __init__(self, path: Path, initial: Callable[[], Any]) -> None:
        self.path = path
        self._lock = asyncio.Lock()
        if path.exists():
            self.data: Any = orjson.loads(path.read_bytes())
        else:
            self.data = initial()
            self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.path.with_suffix(".tmp")
        scratch.write_bytes(orjson.dumps(self.data, option=orjson.OPT_INDENT_2))
        os.replace(scratch, self.path)

    @contextlib.asynccontextmanager
    async def update(self) -> AsyncIterator[Any]:
        """Change ``data`` inside the block; it is written when the block ends without error."""
        async with self._lock:
            before = orjson.dumps(self.data)
            try:
                yield self.data
            except BaseException:
                self.data = orjson.loads(before)
                raise
            self._write()


class ServiceHeaderMiddleware:
    """Adds ``X-Shop-Service: NAME`` to every answer, the guard's refusals included. Pure ASGI."""

    def __init__(self, app: ASGIApp, name: str) -> None:
        self.app = app
        self.header = (SERVICE_HEADER.encode(), name.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, named)


def decided(body: dict[str, Any], why: str, status: int = 200) -> JSONResponse:
    """``body`` with ``allowed_by``: the rule that let the request through, for the page."""
    return JSONResponse({**body, "allowed_by": why}, status, headers={"cache-control": "no-store"})


def problem(status: int, title: str, detail: str) -> JSONResponse:
    """An RFC 9457 problem document."""
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status,
        media_type="application/problem+json",
        headers={"cache-control": "no-store"},
    )


class BadInput(Exception):
    """The request body is not what the endpoint takes (answered 400 with the reason)."""


async def json_body(request: Request, max_bytes: int = 16 * 1024) -> dict[str, Any]:
    """The request's JSON object.

    Raises:
        BadInput: not JSON, not an object, or larger than ``max_bytes``.
    """
    raw = await request.body()
    if len(raw) > max_bytes:
        raise BadInput(f"the body is larger than {max_bytes} bytes")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadInput("the body is not JSON") from None
    if not isinstance(value, dict):
        raise BadInput("the body must be a JSON object")
    return value


def positive_int(value: Any, name: str, *, maximum: int) -> int:
    """``value`` as an int in ``1..maximum``.

    Raises:
        BadInput: otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise BadInput(f"{name} must be a whole number from 1 to {maximum}")
    return value


async def bad_input(request: Request, exc: Exception) -> JSONResponse:
    """400 problem for :class:`BadInput`."""
    return problem(400, "Bad Request", str(exc))
