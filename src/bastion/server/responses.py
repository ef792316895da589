"""Rendering at the authorization server's edge: JSON bodies, OAuth errors, problem details.

Protocol code raises :class:`~bastion.protocol.errors.OAuthError`; this module alone turns it
into bytes (RFC 6749 §5.2 JSON, RFC 6750 / RFC 7617 challenges).
"""

from __future__ import annotations

from typing import Any

import orjson

from bastion.protocol.errors import InvalidClient
from bastion.protocol.errors import OAuthError
from bastion.protocol.errors import SlowDown
from bastion.types import Message
from bastion.types import Send

RawHeaders = list[tuple[bytes, bytes]]

#: RFC 6749 §5.1: token responses "MUST include the HTTP Cache-Control response header field with
#: a value of no-store".
NO_STORE: RawHeaders = [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]
JSON: RawHeaders = [(b"content-type", b"application/json")]
SECURITY: RawHeaders = [(b"x-content-type-options", b"nosniff")]


async def send_json(send: Send, status: int, body: Any, headers: RawHeaders | None = None) -> None:
    """Send a complete JSON response with ``no-store``."""
    payload = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *JSON,
                *NO_STORE,
                *SECURITY,
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def error_response(error: OAuthError, realm: str) -> tuple[int, dict[str, str], RawHeaders]:
    """Status, JSON body and extra headers for a protocol error."""
    headers: RawHeaders = []
    status = error.status_hint
    if isinstance(error, InvalidClient):
        # RFC 6749 §5.2: 401 with WWW-Authenticate matching the scheme the client used.
        status = 401
        headers.append((b"www-authenticate", f'Basic realm="{realm}"'.encode()))
    if isinstance(error, SlowDown):
        headers.append((b"retry-after", str(error.retry_after).encode()))
    if status >= 500 and not isinstance(error, SlowDown):
        status = 500 if error.error == "server_error" else 503
    return status, error.to_dict(), headers


class StatusRecorder:
    """An ASGI ``send`` that passes every message on and remembers the response's status
    (``0`` until it starts): for whoever counts or audits the answer after the app ran."""

    __slots__ = ("_send", "status")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)
