"""HTTP/1.1 framing for the gateway, sans-I/O: bytes in, events out; events in, bytes out.

Two roles, each a small state machine over ``httptools`` (llhttp) in strict mode:

* :class:`ServerConnection` — the client side of the gateway. ``receive_data`` feeds bytes;
  ``next_event`` returns :class:`Request`, :class:`Data`, :class:`EndOfMessage`,
  :class:`Rejected`, :class:`ConnectionClosed`, or the sentinels :data:`NEED_DATA` /
  :data:`PAUSED`. ``start_response`` / ``frame_data`` / ``end_response`` produce the bytes of the
  answer and decide its framing and persistence.
* :class:`ResponseReader` — the upstream side: parses one response per request, told whether the
  request was ``HEAD``.

Rules (RFC 9112 unless stated), all enforced here and nowhere else:

1. Message body length (§6.3): ``Transfer-Encoding`` together with ``Content-Length`` is
   refused (400; "ought to be handled as an error" — the request-smuggling vector). A request
   transfer coding other than exactly ``chunked`` is refused with 501 (§6.1: "A server that
   receives a request message with a transfer coding it does not understand SHOULD respond
   with 501"), and any ``Transfer-Encoding`` in an HTTP/1.0 request is faulty framing (400,
   §6.1). ``Content-Length`` must be a single run of digits (400 otherwise, §6.3 item 5).
   ``GET``, ``HEAD`` and ``TRACE`` requests with content are refused (400; RFC 9110 §9.3.1: an
   upstream that ignores such content would read it as the next request).
2. Field syntax (§5.1, §5.2): whitespace between a field name and the colon, and obs-fold line
   folding, are refused with 400 (llhttp strict mode). Bare LF is refused by llhttp as well.
3. ``Host`` (§3.2): "A server MUST respond with a 400 (Bad Request) status code to any HTTP/1.1
   request message that lacks a Host header field and to any request message that contains
   more than one Host header field line or a Host header field with an invalid field value"
   (``uri-host [ ":" port ]``, RFC 3986 §3.2.2: no userinfo, path or whitespace).
4. Only HTTP/1.0 and HTTP/1.1 are spoken (505 otherwise). ``CONNECT`` and ``Upgrade`` are not
   implemented (501): the gateway does not tunnel.
5. Persistence (§9.3): HTTP/1.1 is persistent unless ``close`` is in ``Connection``;
   HTTP/1.0 only when ``keep-alive`` is. A response of unknown length ends by closing the
   connection for an HTTP/1.0 client and is chunked for an HTTP/1.1 client.
6. Chunked framing (§7.1): chunk sizes, chunk extensions and trailer fields together may take at
   most ``max_header_bytes`` plus as many bytes as the content itself (400 beyond): llhttp skips
   extensions and httptools accumulates a trailer field without bound. Trailer fields are
   dropped, never forwarded (§6.5: they must not be merged into the header section).
7. Responses to ``HEAD``, and 1xx, 204 and 304 responses, carry no content (RFC 9110 §6.4.1).
   An upstream connection is reusable only when nothing but the one response arrived on it
   (:attr:`ResponseReader.reusable`): bytes after the end of a response are an unrequested
   message, and a response whose end the gateway knows only from the request method or the
   status — any ``HEAD`` response, a 204 or 304 announcing content with ``Content-Length`` or
   ``Transfer-Encoding`` — may be followed by the body a non-compliant upstream sends anyway,
   possibly after the next request went out. Either would be read as the next request's
   response (response-queue poisoning), so such connections are closed, never pooled.
8. Hop-by-hop fields (RFC 9110 §7.6.1) never cross the gateway, in either direction.

Pipelined requests are parsed as they arrive but handed out one cycle at a time: after a
request's :class:`EndOfMessage`, ``next_event`` answers :data:`PAUSED` until
``start_next_cycle`` (the driver stops reading meanwhile, so the queue stays small).
"""

from __future__ import annotations

import re
from collections import deque
from http import HTTPStatus
from types import SimpleNamespace
from typing import Final
from typing import NoReturn

import httptools

from bastion.gateway.contract import Headers
from bastion.gateway.limits import FIELD_OVERHEAD
from bastion.gateway.limits import EngineLimits

__all__ = [
    "HOP_BY_HOP",
    "NEED_DATA",
    "PAUSED",
    "ConnectionClosed",
    "Data",
    "EndOfMessage",
    "Rejected",
    "Request",
    "Response",
    "ResponseReader",
    "ServerConnection",
    "UpstreamProtocolError",
    "connection_tokens",
    "encode_request_head",
    "strip_hop_by_hop",
]


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: ``next_event`` has nothing until more bytes arrive.
NEED_DATA: Final = _Sentinel("NEED_DATA")
#: The current request is complete; the next one waits for ``start_next_cycle``.
PAUSED: Final = _Sentinel("PAUSED")

#: RFC 9110 §7.6.1 and RFC 9112 §7: fields that describe one connection, not the message.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
#: What the engine itself writes on a forwarded request or a response (contract.py).
_ENGINE_OWNED: Final = HOP_BY_HOP | {b"content-length", b"host", b"expect"}
_NO_CONTENT_STATUS: Final = frozenset({204, 304})
#: Requests that must not carry content (RFC 9110 §9.3.1, §9.3.2, §9.3.8).
_NO_CONTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"TRACE"})
_CRLF: Final = b"\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"
#: RFC 9110 §7.2: Host = uri-host [ ":" port ]; RFC 3986 §3.2.2: uri-host = IP-literal /
#: IPv4address / reg-name, reg-name = *( unreserved / pct-encoded / sub-delims ). No userinfo
#: (``@``), no path, no whitespace; empty is allowed (a target URI without authority).
_HOST_RE: Final = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+(?:%25[A-Za-z0-9\-._~]+)?\]"
    rb"|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)"
    rb"(?::[0-9]*)?"
)


class UpstreamProtocolError(Exception):
    """The upstream's response is not valid HTTP/1.1 (the client gets a 502)."""


class Request:
    """A complete request head, with the framing the core worked out."""

    __slots__ = (
        "chunked",
        "connection",
        "content_length",
        "expect_continue",
        "headers",
        "host",
        "http_version",
        "keep_alive",
        "method",
        "target",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        http_version: bytes,
        *,
        keep_alive: bool,
        content_length: int | None,
        chunked: bool,
        expect_continue: bool,
        host: bytes | None,
        connection: frozenset[bytes],
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.expect_continue = expect_continue
        self.host = host
        #: Lower-cased tokens of the ``Connection`` field (names of more hop-by-hop fields).
        self.connection = connection

    @property
    def has_body(self) -> bool:
        """Whether content follows the head."""
        return self.chunked or bool(self.content_length)

    def __repr__(self) -> str:
        return f"Request({self.method!r}, {self.target!r}, HTTP/{self.http_version.decode()})"


class Response:
    """A final (non-1xx) response head from an upstream."""

    __slots__ = ("chunked", "content_length", "headers", "keep_alive", "no_body", "status")

    def __init__(
        self,
        status: int,
        headers: Headers,
        *,
        content_length: int | None,
        chunked: bool,
        keep_alive: bool,
        no_body: bool,
    ) -> None:
        self.status = status
        self.headers = headers
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        #: ``True`` for HEAD, 204 and 304: the message ends with its head.
        self.no_body = no_body

    def __repr__(self) -> str:
        return f"Response({self.status})"


class Data:
    """A slice of message content, framing removed."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Data({len(self.data)} bytes)"


class EndOfMessage:
    """The current message's content is complete."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "EndOfMessage()"


class ConnectionClosed:
    """The peer closed its side; ``clean`` when no message was in progress."""

    __slots__ = ("clean",)

    def __init__(self, clean: bool) -> None:
        self.clean = clean

    def __repr__(self) -> str:
        return f"ConnectionClosed(clean={self.clean})"


class Rejected:
    """The request breaks a rule; answer ``status`` and close. No more events follow.

    ``detail`` is safe to show the client (it never contains request bytes).
    """

    __slots__ = ("detail", "status")

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail

    def __repr__(self) -> str:
        return f"Rejected({self.status}, {self.detail!r})"


_END: Final = EndOfMessage()
Event = Request | Data | EndOfMessage | ConnectionClosed | Rejected


class _Stop(Exception):
    """Raised inside a parser callback to stop llhttp; the reason is kept on the connection."""


def connection_tokens(headers: Headers) -> frozenset[bytes]:
    """The lower-cased, comma-separated tokens of every ``Connection`` field (RFC 9110 §7.6.1)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens)


def strip_hop_by_hop(headers: Headers) -> Headers:
    """Drop hop-by-hop fields, those named in ``Connection``, and ``Content-Length``.

    RFC 9110 §7.6.1: "Intermediaries MUST parse a received Connection header field before a
    message is forwarded and, for each connection-option in this field, remove any header or
    trailer field(s) from the message with the same name as the connection-option, and then
    remove the Connection header field itself". ``Content-Length`` goes because the engine
    re-frames every message it forwards.
    """
    named = connection_tokens(headers)
    return [(n, v) for n, v in headers if n not in HOP_BY_HOP and n != b"content-length" and n not in named]


def _check_block(block: bytes, lines: int) -> None:
    # Each line ends in exactly one CRLF; any other CR or LF is a header-injection attempt.
    if block.count(b"\n") != lines or block.count(b"\r") != lines:
        raise ValueError("header field contains CR or LF")


def encode_request_head(
    method: bytes,
    target: bytes,
    headers: Headers,
    host: bytes,
    *,
    content_length: int | None,
    chunked: bool,
    dropped: frozenset[bytes] = frozenset(),
) -> bytes:
    """Serialise a request head for an upstream (RFC 9112 §3).

    ``headers`` may contain anything: fields the engine owns (framing, ``host``, ``expect``,
    hop-by-hop) and fields named in ``dropped`` are left out; ``host`` and the framing come
    from the arguments.

    Raises:
        ValueError: a field name or value contains CR or LF.
    """
    parts = [method, b" ", target, b" HTTP/1.1\r\nhost: ", host, _CRLF]
    lines = 2
    for name, value in headers:
        if name in _ENGINE_OWNED or name in dropped:
            continue
        parts += (name, b": ", value, _CRLF)
        lines += 1
    if chunked:
        parts.append(b"transfer-encoding: chunked\r\n")
        lines += 1
    elif content_length is not None:
        parts += (b"content-length: ", b"%d" % content_length, _CRLF)
        lines += 1
    parts.append(_CRLF)
    block = b"".join(parts)
    _check_block(block, lines + 1)
    return block


def chunk_prefix(size: int) -> bytes:
    """The size line of one chunk (RFC 9112 §7.1)."""
    return b"%x\r\n" % size


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


_STATUS_LINES: Final = {s.value: _status_line(s.value) for s in HTTPStatus}

# Response body modes.
_NONE: Final = 0
_LENGTH: Final = 1
_CHUNKED: Final = 2
_CLOSE: Final = 3


class ServerConnection:
    """The client side of one gateway connection (RFC 9112 as a server).

    Args:
        limits: size limits to enforce (the timeouts in it are the driver's business).
    """

    def __init__(self, limits: EngineLimits) -> None:
        self._limits = limits
        self._events: deque[Event] = deque()
        self._parser = httptools.HttpRequestParser(
            SimpleNamespace(
                on_message_begin=self._on_message_begin,
                on_url=self._on_url,
                on_header=self._on_header,
                on_headers_complete=self._on_headers_complete,
                on_body=self._on_body,
                on_message_complete=self._on_message_complete,
            )
        )
        self._dead = False
        self._failure: Rejected | None = None
        # Per-message parse state.
        self._in_head = False
        self._head_pending = 0
        self._url = b""
        self._headers: Headers = []
        self._header_bytes = 0
        self._body_seen = 0
        self._body_wire = 0
        #: Messages begun so far: a feed in which one begins is not counted as body overhead
        #: (part of it belonged to the previous message).
        self._begun = 0
        self._msg_has_body = False
        self._in_message = False
        # Per-cycle state: the request being answered and how its response is framed.
        self._request: Request | None = None
        self._request_done = False
        self._mode = _NONE
        self._keep_alive = False
        self._response_started = False
        #: A lower body limit for the request of this cycle (:meth:`limit_body`) and the
        #: content handed out against it.
        self._cycle_limit: int | None = None
        self._cycle_body = 0

    # -- receiving ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client; ``b""`` means the client closed its side."""
        if self._dead:
            return
        if not data:
            self._dead = True
            self._events.append(ConnectionClosed(clean=not self._in_message))
            return
        in_body = self._in_message and not self._in_head
        begun = self._begun
        try:
            self._parser.feed_data(data)
        except _Stop:  # pragma: no cover - httptools wraps callback errors
            self._reject(self._failure or Rejected(400, "Malformed request."))
            return
        except httptools.HttpParserInvalidMethodError:
            self._reject(self._failure or Rejected(501, "Request method not implemented."))
            return
        except httptools.HttpParserError as exc:
            if self._failure is None and isinstance(exc, httptools.HttpParserUpgrade):
                self._failure = Rejected(501, "Protocol upgrades are not supported.")
            self._reject(self._failure or Rejected(400, "Malformed request."))
            return
        # A header block still incomplete after this much input is over the limits even if
        # llhttp is still buffering one long field (httptools accumulates it unbounded).
        if self._in_head:
            self._head_pending += len(data)
            cap = 2 * (self._limits.max_request_line + self._limits.max_header_bytes)
            if self._head_pending > cap:
                self._reject(Rejected(431, "Request header fields too large."))
        else:
            self._head_pending = 0
            if in_body and self._in_message and self._begun == begun:
                # Still inside the same body: everything on the wire beyond its content is chunk
                # sizes, extensions and trailer fields, which httptools skips or accumulates
                # without bound (a 20 MB trailer value, endless extensions, 1-byte chunks).
                self._body_wire += len(data)
                overhead = self._body_wire - self._body_seen
                if overhead > self._limits.max_header_bytes + self._body_seen:
                    self._reject(Rejected(400, "Chunked framing overhead too large."))

    def _reject(self, failure: Rejected) -> None:
        self._dead = True
        self._events.append(failure)

    def next_event(self) -> Event | _Sentinel:
        """The next event, or :data:`NEED_DATA` / :data:`PAUSED`."""
        if self._request_done:
            return PAUSED
        events = self._events
        if not events:
            return NEED_DATA
        event = events.popleft()
        if type(event) is Data:
            limit = self._cycle_limit
            if limit is not None:
                self._cycle_body += len(event.data)
                if self._cycle_body > limit:
                    # The same refusal as ``max_body`` while parsing, for a route's lower limit:
                    # the slice that crosses it is never handed out, nothing after it is read.
                    self._dead = True
                    events.clear()
                    return Rejected(413, "Request content too large.")
        elif type(event) is Request:
            self._request = event
            # A request without content is complete with its head: no EndOfMessage follows.
            self._request_done = not event.has_body
            self._cycle_limit = None
            self._cycle_body = 0
        elif type(event) is EndOfMessage:
            self._request_done = True
        return event

    def limit_body(self, max_body: int) -> None:
        """Lower the content limit for the request of this cycle (a route's ``max_body``).

        Counted on the content handed out from now on, so content the parser already queued is
        covered too; content beyond ``max_body`` ends the request with :class:`Rejected` (413)
        where the next :class:`Data` would have been, whether the body is ``Content-Length``
        framed or chunked. The limit never rises above ``EngineLimits.max_body``, which the
        parser keeps enforcing.
        """
        current = self._cycle_limit
        self._cycle_limit = max_body if current is None else min(current, max_body)

    @property
    def request_complete(self) -> bool:
        """Whether the current request's content has been handed out in full."""
        return self._request_done

    @property
    def in_message(self) -> bool:
        """Whether the client is in the middle of sending a request (head or body)."""
        return self._in_message

    @property
    def head_in_progress(self) -> bool:
        """Whether part of a request head has been received (for the header timeout)."""
        return self._in_head

    # -- parser callbacks --------------------------------------------------------------------

    def _on_message_begin(self) -> None:
        self._begun += 1
        self._in_message = True
        self._in_head = True
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body_seen = 0
        self._body_wire = 0
        self._msg_has_body = False

    def _on_url(self, part: bytes) -> None:
        self._url += part
        if len(self._url) > self._limits.max_request_line:
            self._fail(414, "Request target too long.")

    def _on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer field of a chunked body: dropped, never forwarded
        headers = self._headers
        headers.append((name.lower(), value))
        self._header_bytes += len(name) + len(value) + FIELD_OVERHEAD
        if len(headers) > self._limits.max_headers or self._header_bytes > self._limits.max_header_bytes:
            self._fail(431, "Request header fields too large.")

    def _fail(self, status: int, detail: str) -> NoReturn:
        self._failure = Rejected(status, detail)
        raise _Stop

    def _on_headers_complete(self) -> None:
        self._in_head = False
        self._head_pending = 0
        parser = self._parser
        version = parser.get_http_version()
        if version == "1.1":
            http_version = b"1.1"
        elif version == "1.0":
            http_version = b"1.0"
        else:
            self._fail(505, "HTTP version not supported.")
        method = parser.get_method()
        if method == b"CONNECT":
            # RFC 9110 §9.3.6: CONNECT asks for a tunnel; this gateway does not tunnel.
            self._fail(501, "CONNECT is not supported.")
        if parser.should_upgrade():
            self._fail(501, "Protocol upgrades are not supported.")
        headers = self._headers
        host: bytes | None = None
        content_length: int | None = None
        chunked = False
        expect_continue = False
        connection: frozenset[bytes] = frozenset()
        for name, value in headers:
            if name == b"host":
                if host is not None:
                    self._fail(400, "More than one Host header field.")
                host = value
            elif name == b"content-length":
                # llhttp refuses duplicates and non-digits; keep the rule visible here too.
                if content_length is not None or not value.isdigit():
                    self._fail(400, "Invalid Content-Length.")
                content_length = int(value)
            elif name == b"transfer-encoding":
                if chunked or value.strip().lower() != b"chunked":
                    self._fail(501, "Transfer coding not implemented.")
                chunked = True
            elif name == b"connection":
                connection = connection_tokens(headers)
            elif name == b"expect":
                if value.strip().lower() != b"100-continue":
                    self._fail(417, "Expectation not supported.")
                expect_continue = http_version == b"1.1"
        if chunked and content_length is not None:
            self._fail(400, "Both Transfer-Encoding and Content-Length.")
        if (chunked or content_length) and method in _NO_CONTENT_METHODS:
            # RFC 9110 §9.3.1: content in GET "might lead some implementations to reject the
            # request and close the connection because of its potential as a request smuggling
            # attack"; upstreams that ignore it read it as the next request (the CL.0 desync).
            self._fail(400, "Content is not allowed in a GET, HEAD or TRACE request.")
        if chunked and http_version == b"1.0":
            # RFC 9112 §6.1: "A server or client that receives an HTTP/1.0 message containing a
            # Transfer-Encoding header field MUST treat the message as if the framing is faulty".
            self._fail(400, "Transfer-Encoding in an HTTP/1.0 request.")
        if host is None and http_version == b"1.1":
            self._fail(400, "Missing Host header field.")
        if host is not None and not _HOST_RE.fullmatch(host):
            # RFC 9112 §3.2: a server MUST respond with 400 to a request "that contains ... a
            # Host header field with an invalid field value" (``a@internal``, ``a b``, ``a/b``).
            self._fail(400, "Invalid Host header field.")
        if b"upgrade" in connection:
            self._fail(501, "Protocol upgrades are not supported.")
        if content_length is not None and content_length > self._limits.max_body:
            self._fail(413, "Request content too large.")
        keep_alive = b"close" not in connection if http_version == b"1.1" else b"keep-alive" in connection
        self._msg_has_body = chunked or bool(content_length)
        self._events.append(
            Request(
                method,
                self._url,
                headers,
                http_version,
                keep_alive=keep_alive,
                content_length=content_length,
                chunked=chunked,
                expect_continue=expect_continue and (chunked or bool(content_length)),
                host=host,
                connection=connection,
            )
        )

    def _on_body(self, data: bytes) -> None:
        self._body_seen += len(data)
        if self._body_seen > self._limits.max_body:
            self._fail(413, "Request content too large.")
        self._events.append(Data(data))

    def _on_message_complete(self) -> None:
        self._in_message = False
        if self._msg_has_body:
            self._events.append(_END)

    # -- sending -----------------------------------------------------------------------------

    @property
    def request(self) -> Request | None:
        """The request of the current cycle."""
        return self._request

    def start_response(
        self,
        status: int,
        headers: Headers,
        *,
        content_length: int | None,
        close: bool = False,
    ) -> bytes:
        """Serialise the response head and fix the body framing for this cycle.

        Args:
            status: final status code (>= 200).
            headers: fields to send; framing and ``connection`` fields in it are ignored.
            content_length: the body length when known; ``None`` streams it (chunked for an
                HTTP/1.1 client, close-delimited for HTTP/1.0).
            close: end the connection after this response regardless.

        Raises:
            ValueError: a field contains CR or LF.
        """
        request = self._request
        is_head = request is not None and request.method == b"HEAD"
        http10 = request is None or request.http_version == b"1.0"
        keep_alive = request is not None and request.keep_alive and not close
        parts = [_STATUS_LINES.get(status) or _status_line(status)]
        lines = 1
        for name, value in headers:
            if name in _ENGINE_OWNED:
                continue
            parts += (name, b": ", value, _CRLF)
            lines += 1
        if status in _NO_CONTENT_STATUS:
            mode = _NONE
        elif is_head:
            mode = _NONE
            if content_length is not None:
                parts += (b"content-length: ", b"%d" % content_length, _CRLF)
                lines += 1
        elif content_length is not None:
            mode = _LENGTH
            parts += (b"content-length: ", b"%d" % content_length, _CRLF)
            lines += 1
        elif not http10:
            mode = _CHUNKED
            parts.append(b"transfer-encoding: chunked\r\n")
            lines += 1
        else:
            mode = _CLOSE
            keep_alive = False
        if not keep_alive:
            parts.append(b"connection: close\r\n")
            lines += 1
        elif http10:
            parts.append(b"connection: keep-alive\r\n")
            lines += 1
        parts.append(_CRLF)
        block = b"".join(parts)
        _check_block(block, lines + 1)
        self._mode = mode
        self._keep_alive = keep_alive
        self._response_started = True
        return block

    @property
    def response_started(self) -> bool:
        """Whether the head of this cycle's response has been produced."""
        return self._response_started

    @property
    def response_has_body(self) -> bool:
        """Whether the response being sent carries content at all."""
        return self._mode != _NONE

    def frame_data(self, data: bytes) -> list[bytes]:
        """The pieces to write for ``data`` (no copy: the caller uses ``writelines``)."""
        mode = self._mode
        if mode == _CHUNKED:
            return [b"%x\r\n" % len(data), data, _CRLF] if data else []
        if mode == _NONE:
            return []
        return [data]

    def end_response(self) -> bytes:
        """Bytes that end the response body (the last chunk when chunked)."""
        return _LAST_CHUNK if self._mode == _CHUNKED else b""

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may carry another request once this response is written."""
        return self._keep_alive and self._request_done and not self._dead

    def start_next_cycle(self) -> None:
        """Reset for the next pipelined request.

        Raises:
            RuntimeError: the connection cannot be reused (check :attr:`keep_alive` first).
        """
        if not self.keep_alive:
            raise RuntimeError("connection is not reusable")
        self._request = None
        self._request_done = False
        self._mode = _NONE
        self._keep_alive = False
        self._response_started = False
        self._cycle_limit = None
        self._cycle_body = 0


class ResponseReader:
    """Parses the responses an upstream sends on one connection, one per request.

    Args:
        max_overhead: most bytes of one response that are not content: the head, chunk sizes and
            extensions, trailer fields (larger: :class:`UpstreamProtocolError`, the client gets
            502). httptools would otherwise accumulate an endless header field in memory for as
            long as the read timeout lets the upstream send it.
    """

    def __init__(self, max_overhead: int = 64 * 1024) -> None:
        self._max_overhead = max_overhead
        self._wire = 0
        self._content = 0
        self._begun = 0
        self._events: deque[Response | Data | EndOfMessage] = deque()
        self._parser = self._new_parser()
        self._head_request = False
        self._headers: Headers = []
        self._in_head = False
        self._interim = False
        self._close_delimited = False
        self._started = False
        self._complete = True
        #: Nothing makes the connection unfit for another request (see :attr:`reusable`).
        self._clean = True
        self._reset_parser = False
        self._error: str | None = None

    def _new_parser(self) -> httptools.HttpResponseParser:
        return httptools.HttpResponseParser(
            SimpleNamespace(
                on_message_begin=self._on_message_begin,
                on_header=self._on_header,
                on_headers_complete=self._on_headers_complete,
                on_body=self._on_body,
                on_message_complete=self._on_message_complete,
            )
        )

    def start(self, *, head_request: bool) -> None:
        """Expect the response to a new request (``head_request``: it was ``HEAD``)."""
        if self._reset_parser:
            self._parser = self._new_parser()
            self._reset_parser = False
        self._head_request = head_request
        self._started = False
        self._complete = False
        self._clean = True
        self._close_delimited = False
        self._events.clear()

    @property
    def received_any(self) -> bool:
        """Whether any byte of the current response has arrived (retry safety)."""
        return self._started

    @property
    def complete(self) -> bool:
        """Whether the current response has been read in full."""
        return self._complete

    @property
    def reusable(self) -> bool:
        """Whether the connection may carry another request: the response is complete, no byte
        arrived after it, and its end did not rest on the request method or status alone while
        its fields announced content (rule 7 of the module docstring)."""
        return self._complete and self._clean

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the upstream.

        Raises:
            UpstreamProtocolError: the bytes are not a valid response, or arrived unasked.
        """
        if self._complete:
            raise UpstreamProtocolError("data outside of a response")
        self._started = True
        begun = self._begun
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._error is None and self._complete and self._reset_parser:
                # The deliberate stop after a HEAD response's head, or at bytes that follow a
                # complete response (then ``reusable`` is false and the connection is closed).
                return
            raise UpstreamProtocolError(self._error or "malformed response") from exc
        if not self._complete and self._begun == begun:
            self._wire += len(data)
            if self._wire - self._content > self._max_overhead:
                raise UpstreamProtocolError("response head or chunk metadata too large")

    def receive_eof(self) -> None:
        """The upstream closed its side.

        Raises:
            UpstreamProtocolError: the response was cut short (or never started).
        """
        if self._complete:
            return
        if self._close_delimited:
            self._complete = True
            self._events.append(_END)
            return
        raise UpstreamProtocolError("connection closed before the response was complete")

    def next_event(self) -> Response | Data | EndOfMessage | None:
        """The next parsed event, or ``None``."""
        return self._events.popleft() if self._events else None

    def _on_message_begin(self) -> None:
        if self._complete:
            # Another message after the response to the current request, in the same read: the
            # upstream answers something nobody asked (or a body it announced on a HEAD, 204 or
            # 304). Not parsed, never handed on, and the connection is not reused: otherwise it
            # would be read as the next request's response.
            self._clean = False
            self._reset_parser = True
            raise _Stop
        self._complete = False
        self._headers = []
        self._in_head = True
        self._begun += 1
        self._wire = 0
        self._content = 0

    def _on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            self._headers.append((name.lower(), value))

    def _on_headers_complete(self) -> None:
        self._in_head = False
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                self._error = "unrequested protocol switch"
                raise _Stop
            self._interim = True  # 100 / 103: skipped; the final response follows
            return
        self._interim = False
        headers = self._headers
        content_length: int | None = None
        chunked = False
        persistent = self._parser.get_http_version() == "1.1"
        for name, value in headers:
            if name == b"content-length":
                content_length = int(value)  # llhttp checked the digits and duplicates
            elif name == b"transfer-encoding":
                if value.rsplit(b",", 1)[-1].strip().lower() != b"chunked" or b"," in value:
                    self._error = "unsupported transfer coding"
                    raise _Stop
                chunked = True
        tokens = connection_tokens(headers)
        persistent = b"close" not in tokens if persistent else b"keep-alive" in tokens
        no_body = self._head_request or status in _NO_CONTENT_STATUS
        if no_body and (self._head_request or chunked or content_length):
            # The end is known only from the request or the status while the fields announce
            # content: a non-compliant upstream may still send it, at any time (rule 7).
            self._clean = False
        if not no_body and not chunked and content_length is None:
            self._close_delimited = True
            persistent = False
        self._events.append(
            Response(
                status,
                headers,
                content_length=None if chunked else content_length,
                chunked=chunked,
                keep_alive=persistent,
                no_body=no_body,
            )
        )
        if self._head_request:
            # llhttp cannot be told the request was HEAD; stop it here and start afresh for the
            # next response (RFC 9110 §9.3.2: the response has no content).
            self._complete = True
            self._reset_parser = True
            self._events.append(_END)
            raise _Stop

    def _on_body(self, data: bytes) -> None:
        self._content += len(data)
        self._events.append(Data(data))

    def _on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._complete = True
        self._events.append(_END)
