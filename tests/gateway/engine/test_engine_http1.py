"""The sans-I/O HTTP/1.1 core: framing rules as unit tests, no sockets."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from bastion.gateway.http1 import NEED_DATA
from bastion.gateway.http1 import PAUSED
from bastion.gateway.http1 import ConnectionClosed
from bastion.gateway.http1 import Data
from bastion.gateway.http1 import EndOfMessage
from bastion.gateway.http1 import Rejected
from bastion.gateway.http1 import Request
from bastion.gateway.http1 import Response
from bastion.gateway.http1 import ResponseReader
from bastion.gateway.http1 import ServerConnection
from bastion.gateway.http1 import UpstreamProtocolError
from bastion.gateway.http1 import encode_request_head
from bastion.gateway.http1 import strip_hop_by_hop
from bastion.gateway.limits import EngineLimits


def events(data: bytes | list[bytes], limits: EngineLimits | None = None) -> list[object]:
    conn = ServerConnection(limits or EngineLimits())
    for piece in [data] if isinstance(data, bytes) else data:
        conn.receive_data(piece)
    out: list[object] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA or event is PAUSED:
            out.append(event)
            return out
        out.append(event)
        if isinstance(event, Rejected | ConnectionClosed):
            return out


def rejected(data: bytes, limits: EngineLimits | None = None) -> int:
    out = events(data, limits)
    last = out[-1]
    assert isinstance(last, Rejected), out
    return last.status


def body_of(out: list[object]) -> bytes:
    return b"".join(e.data for e in out if isinstance(e, Data))


# -- request heads -----------------------------------------------------------------------------


def test_simple_get() -> None:
    out = events(b"GET /a?b=1 HTTP/1.1\r\nHost: api\r\nX-Thing: One\r\n\r\n")
    request = out[0]
    assert isinstance(request, Request)
    assert request.method == b"GET"
    assert request.target == b"/a?b=1"
    assert request.headers == [(b"host", b"api"), (b"x-thing", b"One")]
    assert request.http_version == b"1.1"
    assert request.keep_alive
    assert not request.has_body
    # A request without content is complete with its head: the cycle is paused at once.
    assert out[1:] == [PAUSED]


def test_content_length_body() -> None:
    out = events(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
    assert isinstance(out[0], Request)
    assert out[0].content_length == 5
    assert body_of(out) == b"hello"
    assert isinstance(out[-2], EndOfMessage)
    assert out[-1] is PAUSED


def test_chunked_body_and_trailers_dropped() -> None:
    out = events(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    request = out[0]
    assert isinstance(request, Request)
    assert request.chunked
    assert request.content_length is None
    assert request.headers == [(b"host", b"a"), (b"transfer-encoding", b"chunked")]
    assert body_of(out) == b"abcde"
    assert isinstance(out[-2], EndOfMessage)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        # RFC 9112 §6.1/§6.3: both framings is the request-smuggling vector.
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
        # Transfer codings other than exactly "chunked".
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        # Content-Length: differing, repeated, list-valued, signed, non-numeric.
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n", 400),
        # RFC 9112 §5.2 obs-fold and §5.1 whitespace before the colon.
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 400),
        # llhttp in strict mode does not tolerate bare LF line endings.
        (b"GET / HTTP/1.1\nHost: a\n\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\n\r\n", 400),
        # Control characters in a value.
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
        # RFC 9112 §3.2 Host rules.
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        # Versions and methods.
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505),
        (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 501),
        (b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n", 501),
        # Upgrade (websocket) is refused; the gateway does not tunnel.
        (b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 501),
        # RFC 9110 §10.1.1: an expectation other than 100-continue.
        (b"POST / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\nx", 417),
    ],
)
def test_malformed_requests_are_rejected(raw: bytes, status: int) -> None:
    assert rejected(raw) == status


def test_rejected_is_the_last_event() -> None:
    conn = ServerConnection(EngineLimits())
    conn.receive_data(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n")
    assert isinstance(conn.next_event(), Rejected)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert conn.next_event() is NEED_DATA


def test_upgrade_without_connection_token_is_a_plain_request() -> None:
    out = events(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
    assert isinstance(out[0], Request)


@pytest.mark.parametrize("target", [b"http://other.example/x?y", b"*"])
def test_absolute_and_asterisk_form_targets_are_handed_over_unchanged(target: bytes) -> None:
    out = events(b"OPTIONS " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(out[0], Request)
    assert out[0].target == target


@pytest.mark.parametrize(
    ("raw", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, CLOSE\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
    ],
)
def test_persistence(raw: bytes, keep_alive: bool) -> None:
    request = events(raw)[0]
    assert isinstance(request, Request)
    assert request.keep_alive is keep_alive


def test_expect_continue() -> None:
    request = events(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n")[0]
    assert isinstance(request, Request)
    assert request.expect_continue
    # No content, nothing to wait for.
    request = events(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n")[0]
    assert isinstance(request, Request)
    assert not request.expect_continue


# -- limits ------------------------------------------------------------------------------------


def test_request_line_limit_is_414() -> None:
    limits = EngineLimits(max_request_line=64)
    assert isinstance(events(b"GET /" + b"a" * 50 + b" HTTP/1.1\r\nHost: a\r\n\r\n", limits)[0], Request)
    assert rejected(b"GET /" + b"a" * 64 + b" HTTP/1.1\r\nHost: a\r\n\r\n", limits) == 414
    # Also when the target arrives in small pieces.
    out = events([b"GET /", *[b"a" * 10] * 8], limits)
    assert isinstance(out[-1], Rejected)
    assert out[-1].status == 414


def test_header_count_limit_is_431() -> None:
    limits = EngineLimits(max_headers=5)
    ok = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(4)) + b"\r\n"
    assert isinstance(events(ok, limits)[0], Request)
    too_many = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(5)) + b"\r\n"
    assert rejected(too_many, limits) == 431


def test_header_block_size_limit_is_431() -> None:
    limits = EngineLimits(max_header_bytes=1024)
    assert rejected(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 1100 + b"\r\n\r\n", limits) == 431


def test_endless_header_value_is_cut_off() -> None:
    # One field that never ends: llhttp keeps buffering it, the core stops it anyway.
    limits = EngineLimits(max_request_line=256, max_header_bytes=1024)
    conn = ServerConnection(limits)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ")
    for _ in range(10):
        conn.receive_data(b"v" * 512)
    event = conn.next_event()
    assert isinstance(event, Rejected)
    assert event.status == 431


def test_body_limit_content_length_is_413_before_reading() -> None:
    limits = EngineLimits(max_body=10)
    assert rejected(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n", limits) == 413


def test_body_limit_chunked_is_413_while_streaming() -> None:
    limits = EngineLimits(max_body=10)
    out = events(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n",
        limits,
    )
    assert isinstance(out[0], Request)
    assert body_of(out) == b"12345678"
    assert isinstance(out[-1], Rejected)
    assert out[-1].status == 413


def _limited(data: bytes, max_body: int) -> tuple[ServerConnection, list[object]]:
    """Parse ``data``, take the request, lower its body limit, then drain the events."""
    conn = ServerConnection(EngineLimits())
    conn.receive_data(data)
    request = conn.next_event()
    assert isinstance(request, Request)
    conn.limit_body(max_body)
    out: list[object] = [request]
    while True:
        event = conn.next_event()
        out.append(event)
        if event is NEED_DATA or event is PAUSED or isinstance(event, Rejected):
            return conn, out


def test_a_cycle_body_limit_cuts_a_chunked_body_where_it_crosses() -> None:
    _, out = _limited(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\n1234\r\n4\r\n5678\r\n4\r\n9abc\r\n0\r\n\r\n",
        6,
    )
    # The first slice fits; the one crossing 6 bytes is never handed out, nor the end.
    assert body_of(out) == b"1234"
    assert isinstance(out[-1], Rejected)
    assert out[-1].status == 413
    assert not any(isinstance(event, EndOfMessage) for event in out)


def test_a_cycle_body_limit_counts_content_length_bodies_already_queued() -> None:
    conn, out = _limited(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\n\r\n12345678", 7)
    assert isinstance(out[-1], Rejected)
    assert out[-1].status == 413
    assert body_of(out) == b""
    assert not conn.keep_alive


def test_a_cycle_body_limit_at_the_exact_size_passes() -> None:
    _, out = _limited(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\n\r\n12345678", 8)
    assert body_of(out) == b"12345678"
    assert isinstance(out[-2], EndOfMessage)
    assert out[-1] is PAUSED


def test_a_cycle_body_limit_ends_with_its_cycle() -> None:
    conn = ServerConnection(EngineLimits())
    conn.receive_data(
        b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
        b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert isinstance(conn.next_event(), Request)
    conn.limit_body(2)
    assert isinstance(conn.next_event(), Data)
    assert isinstance(conn.next_event(), EndOfMessage)
    conn.start_response(200, [], content_length=0)
    conn.start_next_cycle()
    assert isinstance(conn.next_event(), Request)
    data = conn.next_event()
    assert isinstance(data, Data)
    assert data.data == b"hello"


# -- cycles and pipelining ---------------------------------------------------------------------


def test_pipelined_requests_are_handed_out_one_cycle_at_a_time() -> None:
    conn = ServerConnection(EngineLimits())
    conn.receive_data(
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
        b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    first = conn.next_event()
    assert isinstance(first, Request)
    assert first.target == b"/1"
    assert conn.next_event() is PAUSED
    conn.start_response(200, [], content_length=0)
    assert conn.keep_alive
    conn.start_next_cycle()
    second = conn.next_event()
    assert isinstance(second, Request)
    assert second.target == b"/2"
    assert isinstance(conn.next_event(), Data)
    assert isinstance(conn.next_event(), EndOfMessage)
    assert conn.next_event() is PAUSED
    conn.start_response(200, [], content_length=0)
    conn.start_next_cycle()
    third = conn.next_event()
    assert isinstance(third, Request)
    assert third.target == b"/3"


def test_start_next_cycle_refuses_a_connection_that_must_close() -> None:
    conn = ServerConnection(EngineLimits())
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    assert isinstance(conn.next_event(), Request)
    conn.start_response(400, [], content_length=0)
    # The body was not read to its end: the next bytes are not a request head.
    assert not conn.keep_alive
    with pytest.raises(RuntimeError):
        conn.start_next_cycle()


def test_eof() -> None:
    conn = ServerConnection(EngineLimits())
    conn.receive_data(b"")
    event = conn.next_event()
    assert isinstance(event, ConnectionClosed)
    assert event.clean
    conn = ServerConnection(EngineLimits())
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    conn.next_event()
    conn.next_event()
    conn.receive_data(b"")
    event = conn.next_event()
    assert isinstance(event, ConnectionClosed)
    assert not event.clean


REQUEST = (
    b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(REQUEST) - 1), max_size=8))
def test_any_split_of_the_input_gives_the_same_events(cuts: list[int]) -> None:
    points = [0, *sorted(set(cuts)), len(REQUEST)]
    pieces = [REQUEST[a:b] for a, b in itertools.pairwise(points)]
    out = events(pieces)
    request = out[0]
    assert isinstance(request, Request)
    assert request.target == b"/upload"
    assert body_of(out) == b"hello world"
    assert isinstance(out[-2], EndOfMessage)
    assert out[-1] is PAUSED


# -- responses to the client -------------------------------------------------------------------


def cycle(raw: bytes) -> ServerConnection:
    conn = ServerConnection(EngineLimits())
    conn.receive_data(raw)
    while conn.next_event() not in (PAUSED, NEED_DATA):
        pass
    return conn


def test_response_with_length() -> None:
    conn = cycle(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    head = conn.start_response(200, [(b"x-a", b"1"), (b"content-length", b"999")], content_length=5)
    assert head == b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\n\r\n"
    assert conn.frame_data(b"hello") == [b"hello"]
    assert conn.end_response() == b""
    assert conn.keep_alive


def test_unknown_length_is_chunked_for_http11() -> None:
    conn = cycle(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    head = conn.start_response(200, [(b"transfer-encoding", b"gzip")], content_length=None)
    assert head == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    assert b"".join(conn.frame_data(b"x" * 17)) == b"11\r\n" + b"x" * 17 + b"\r\n"
    assert conn.frame_data(b"") == []
    assert conn.end_response() == b"0\r\n\r\n"
    assert conn.keep_alive


def test_unknown_length_closes_for_http10() -> None:
    conn = cycle(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    head = conn.start_response(200, [], content_length=None)
    assert head == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n"
    assert conn.frame_data(b"abc") == [b"abc"]
    assert not conn.keep_alive


def test_http10_keep_alive_is_announced() -> None:
    conn = cycle(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    head = conn.start_response(200, [], content_length=0)
    assert head == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n"
    assert conn.keep_alive


@pytest.mark.parametrize(("method", "status"), [(b"HEAD", 200), (b"GET", 204), (b"GET", 304)])
def test_no_body_responses(method: bytes, status: int) -> None:
    conn = cycle(method + b" / HTTP/1.1\r\nHost: a\r\n\r\n")
    head = conn.start_response(status, [], content_length=None)
    assert b"transfer-encoding" not in head
    assert conn.frame_data(b"ignored") == []
    assert conn.end_response() == b""
    assert not conn.response_has_body
    assert conn.keep_alive


def test_head_response_keeps_content_length() -> None:
    conn = cycle(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    head = conn.start_response(200, [], content_length=1234)
    assert b"content-length: 1234\r\n" in head


def test_close_is_announced() -> None:
    conn = cycle(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    head = conn.start_response(503, [], content_length=0, close=True)
    assert head.endswith(b"connection: close\r\n\r\n")
    assert not conn.keep_alive


@pytest.mark.parametrize("value", [b"a\r\nx-injected: 1", b"a\nb", b"a\rb"])
def test_header_injection_is_refused(value: bytes) -> None:
    conn = cycle(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises(ValueError):
        conn.start_response(200, [(b"x-a", value)], content_length=0)
    with pytest.raises(ValueError):
        encode_request_head(b"GET", b"/", [(b"x-a", value)], b"h", content_length=None, chunked=False)


# -- forwarded requests ------------------------------------------------------------------------


def test_request_head_for_upstream() -> None:
    head = encode_request_head(
        b"POST",
        b"/svc/x?y=1",
        [
            (b"host", b"ignored"),
            (b"x-a", b"1"),
            (b"connection", b"keep-alive, x-hop"),
            (b"x-hop", b"secret"),
            (b"keep-alive", b"timeout=5"),
            (b"transfer-encoding", b"chunked"),
            (b"content-length", b"5"),
            (b"te", b"trailers"),
            (b"upgrade", b"h2c"),
            (b"expect", b"100-continue"),
        ],
        b"api.example",
        content_length=5,
        chunked=False,
        dropped=frozenset({b"x-hop"}),
    )
    assert head == b"POST /svc/x?y=1 HTTP/1.1\r\nhost: api.example\r\nx-a: 1\r\ncontent-length: 5\r\n\r\n"
    chunked = encode_request_head(b"PUT", b"/", [], b"h", content_length=None, chunked=True)
    assert chunked == b"PUT / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n"


def test_strip_hop_by_hop() -> None:
    headers = [
        (b"connection", b"close, X-Secret"),
        (b"keep-alive", b"timeout=5"),
        (b"proxy-connection", b"keep-alive"),
        (b"te", b"trailers"),
        (b"trailer", b"x-t"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"h2c"),
        (b"x-secret", b"1"),
        (b"content-length", b"3"),
        (b"x-kept", b"yes"),
    ]
    assert strip_hop_by_hop(headers) == [(b"x-kept", b"yes")]


# -- upstream responses ------------------------------------------------------------------------


def read(reader: ResponseReader, *pieces: bytes, eof: bool = False) -> list[object]:
    for piece in pieces:
        reader.receive_data(piece)
    if eof:
        reader.receive_eof()
    out: list[object] = []
    while (event := reader.next_event()) is not None:
        out.append(event)
    return out


def test_upstream_content_length_and_reuse() -> None:
    reader = ResponseReader()
    reader.start(head_request=False)
    out = read(reader, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: 1\r\n\r\nabc")
    response = out[0]
    assert isinstance(response, Response)
    assert (response.status, response.content_length, response.chunked) == (200, 3, False)
    assert response.keep_alive
    assert response.headers == [(b"content-length", b"3"), (b"x-a", b"1")]
    assert body_of(out) == b"abc"
    assert isinstance(out[-1], EndOfMessage)
    assert reader.complete
    reader.start(head_request=False)
    assert not reader.received_any
    out = read(reader, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert isinstance(out[0], Response)
    assert out[0].status == 404
    assert not out[0].keep_alive


def test_upstream_chunked_trailers_dropped() -> None:
    reader = ResponseReader()
    reader.start(head_request=False)
    out = read(
        reader, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
    )
    response = out[0]
    assert isinstance(response, Response)
    assert response.chunked
    assert response.content_length is None
    assert response.headers == [(b"transfer-encoding", b"chunked")]
    assert body_of(out) == b"abc"


def test_upstream_close_delimited() -> None:
    reader = ResponseReader()
    reader.start(head_request=False)
    out = read(reader, b"HTTP/1.1 200 OK\r\n\r\nabc", b"def")
    response = out[0]
    assert isinstance(response, Response)
    assert not response.keep_alive
    assert response.content_length is None
    assert not response.chunked
    assert not any(isinstance(e, EndOfMessage) for e in out)
    out += read(reader, eof=True)
    assert body_of(out) == b"abcdef"
    assert isinstance(out[-1], EndOfMessage)


def test_upstream_head_response_has_no_body_and_the_next_response_parses() -> None:
    reader = ResponseReader()
    reader.start(head_request=True)
    out = read(reader, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    assert isinstance(out[0], Response)
    assert out[0].no_body
    assert out[0].content_length == 1000
    assert isinstance(out[1], EndOfMessage)
    reader.start(head_request=False)
    out = read(reader, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert body_of(out) == b"ok"


@pytest.mark.parametrize("status", [204, 304])
def test_upstream_no_content_statuses(status: int) -> None:
    reader = ResponseReader()
    reader.start(head_request=False)
    out = read(reader, b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\n" % status)
    assert isinstance(out[0], Response)
    assert out[0].no_body
    assert isinstance(out[1], EndOfMessage)


INJECTED = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\ninjected"


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\netag: "e"\r\n\r\n',
    ],
)
# (Empty lines between messages are skipped by llhttp, as RFC 9112 §2.2 allows, here and before
# the next response alike: they cannot shift one response onto another request.)
@pytest.mark.parametrize("extra", [INJECTED, INJECTED[:20], b"H", b"\r\nX"])
def test_a_message_beginning_after_the_response_is_not_handed_on(response: bytes, extra: bytes) -> None:
    """Bytes after a complete response, in the same read: llhttp begins another message. That
    beginning must not leave the reader "complete" and reusable with a parser halfway through an
    unrequested response, which the next request on the connection would then read as its own."""
    reader = ResponseReader()
    reader.start(head_request=False)
    out = read(reader, response + extra)
    assert isinstance(out[0], Response)
    assert isinstance(out[-1], EndOfMessage)
    assert sum(isinstance(e, Response) for e in out) == 1
    assert b"injected" not in body_of(out)
    assert reader.complete
    assert not reader.reusable
    # Any later byte is refused outright.
    with pytest.raises(UpstreamProtocolError):
        reader.receive_data(INJECTED)


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\netag: "e"\r\n\r\n',
    ],
)
def test_a_response_alone_leaves_the_connection_reusable(response: bytes) -> None:
    reader = ResponseReader()
    reader.start(head_request=False)
    read(reader, response)
    assert reader.reusable
    # Every request starts clean again.
    reader.start(head_request=False)
    assert not reader.reusable
    read(reader, response)
    assert reader.reusable


@pytest.mark.parametrize(
    ("head_request", "response"),
    [
        (True, b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"),
        (True, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
        (True, b"HTTP/1.1 200 OK\r\n\r\n"),
        (True, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
        (False, b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"),
        (False, b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n"),
        (False, b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n"),
    ],
)
def test_a_response_whose_end_rests_on_the_method_or_status_is_not_reusable(
    head_request: bool, response: bytes
) -> None:
    """A HEAD response, or a 204/304 announcing content: complete at its head (RFC 9110 §6.4.1),
    but an upstream that sends the content anyway, now or after the next request went out, would
    have it read as that request's response."""
    reader = ResponseReader()
    reader.start(head_request=head_request)
    out = read(reader, response)
    assert isinstance(out[0], Response)
    assert out[0].no_body
    assert isinstance(out[-1], EndOfMessage)
    assert reader.complete
    assert not reader.reusable


def test_upstream_interim_responses_are_skipped() -> None:
    reader = ResponseReader()
    reader.start(head_request=False)
    out = read(
        reader,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    )
    assert len(out) == 2
    assert isinstance(out[0], Response)
    assert out[0].status == 201


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"NOT HTTP\r\n\r\n",
    ],
)
def test_upstream_protocol_errors(raw: bytes) -> None:
    reader = ResponseReader()
    reader.start(head_request=False)
    with pytest.raises(UpstreamProtocolError):
        reader.receive_data(raw)


def test_upstream_truncated_or_unasked() -> None:
    reader = ResponseReader()
    reader.start(head_request=False)
    reader.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(UpstreamProtocolError):
        reader.receive_eof()
    idle = ResponseReader()
    with pytest.raises(UpstreamProtocolError):
        idle.receive_data(b"HTTP/1.1 200 OK\r\n\r\n")
    never = ResponseReader()
    never.start(head_request=False)
    with pytest.raises(UpstreamProtocolError):
        never.receive_eof()
