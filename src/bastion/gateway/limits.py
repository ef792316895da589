"""Client-side limits and timeouts of the gateway's HTTP/1.1 engine.

One frozen object, passed to :class:`bastion.gateway.server.GatewayServer`; the policy layer builds
it from its settings. Every default here is the documented default.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: Bytes a header field takes beyond its name and value in the size limits: ``": "`` and CRLF.
FIELD_OVERHEAD = 4


def header_block_bytes(headers: Iterable[tuple[bytes, bytes]]) -> int:
    """The size of a header block as ``max_header_bytes`` measures it (names, values and
    :data:`FIELD_OVERHEAD` per field), for limits checked after parsing (a route's own)."""
    return sum(len(name) + len(value) + FIELD_OVERHEAD for name, value in headers)


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """Sizes and timeouts the front enforces on every client connection.

    Attributes:
        max_request_line: Longest request target accepted, in bytes (longer: 414).
        max_header_bytes: Largest header block, in bytes (larger: 431).
        max_headers: Most header fields in one request (more: 431).
        max_body: Largest request body, in bytes (larger: 413). Checked up front against
            ``Content-Length`` and while streaming a chunked body.
        header_timeout: Seconds from the first byte of a request (or from accepting the
            connection) until its header block is complete; slowloris protection (408, close).
        keepalive_timeout: Seconds an idle keep-alive connection waits for its next request.
        body_timeout: Seconds the front waits for the next request-body byte (408 or close).
        min_body_rate: Bytes per second a request body must average once ``body_timeout`` has
            passed (each byte buys ``1 / min_body_rate`` more seconds, as Apache's
            mod_reqtimeout ``MinRate``); ``0`` turns it off. Time the front stops reading for
            back-pressure does not count.
        write_buffer_high: Bytes buffered towards a client above which upstream reads pause.
        write_buffer_low: Bytes buffered towards a client below which upstream reads resume.
        drain_limit: Unread request-body bytes the front discards to keep a connection alive
            after the gateway answered without reading the body; above it, the connection closes.
    """

    max_request_line: int = 8 * 1024
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    max_body: int = 10 * 1024 * 1024
    header_timeout: float = 10.0
    keepalive_timeout: float = 60.0
    body_timeout: float = 30.0
    min_body_rate: int = 512
    write_buffer_high: int = 256 * 1024
    write_buffer_low: int = 64 * 1024
    drain_limit: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in ("max_request_line", "max_header_bytes", "max_headers", "write_buffer_high"):
            if getattr(self, name) <= 0:
                raise ValueError(f"EngineLimits.{name} must be positive")
        for name in ("max_body", "write_buffer_low", "drain_limit", "min_body_rate"):
            if getattr(self, name) < 0:
                raise ValueError(f"EngineLimits.{name} must not be negative")
        for name in ("header_timeout", "keepalive_timeout", "body_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"EngineLimits.{name} must be a positive number of seconds")
        if self.write_buffer_low > self.write_buffer_high:
            raise ValueError("EngineLimits.write_buffer_low must not exceed write_buffer_high")
