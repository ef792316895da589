"""Request smuggling and framing attacks, as the request smugglers and RFC 9112 describe them.

Two levels. The framing rules live in the sans-I/O core (``bastion.gateway.http1``), so each
malformed message is first fed to :class:`ServerConnection` directly and its verdict checked.
Then the payloads that carry a *second, hidden request* (to ``/admin``, with spoofed identity
headers) go over a real socket through the whole gateway to the recording upstream, which must
never receive that hidden request, nor any byte it cannot parse strictly.

Sources: RFC 9112 §2.2 (bare CR, bare LF), §3 (request line, HTTP/0.9), §3.2 (Host), §5
(field syntax, obs-fold), §6.1 (Transfer-Encoding; HTTP/1.0), §6.3 (message length, CL+TE),
§7.1 (chunks, extensions, trailers); RFC 9110 §9.3.1 (content in GET); PortSwigger's CL.TE,
TE.CL, TE.TE, CL.0 and "0.CL" desync research; HAProxy CVE-2019-18277 and CVE-2023-25725, Node
llhttp CVE-2022-32213/32214/32215, Envoy CVE-2019-18801.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from bastion.gateway.http1 import NEED_DATA
from bastion.gateway.http1 import PAUSED
from bastion.gateway.http1 import ConnectionClosed
from bastion.gateway.http1 import Data
from bastion.gateway.http1 import EndOfMessage
from bastion.gateway.http1 import Rejected
from bastion.gateway.http1 import Request
from bastion.gateway.http1 import ServerConnection
from bastion.gateway.limits import EngineLimits
from tests.conformance.gw_attack import Stack
from tests.conformance.gw_attack import bearer
from tests.conformance.gw_attack import get
from tests.conformance.gw_attack import stack

__all__ = ["stack"]

#: The request an attacker hides; the upstream must never see it.
HIDDEN = b"GET /admin/users HTTP/1.1\r\nHost: api.example\r\nX-Bastion-Subject: root\r\nX-Bastion-Scopes: admin\r\n\r\n"


def events(data: bytes | list[bytes], limits: EngineLimits | None = None) -> list[object]:
    """Feed ``data`` and collect events, answering each complete request so pipelining goes on."""
    conn = ServerConnection(limits or EngineLimits())
    for piece in [data] if isinstance(data, bytes) else data:
        conn.receive_data(piece)
    out: list[object] = []
    while True:
        event = conn.next_event()
        if event is PAUSED and conn.request is not None and not conn.response_started:
            conn.start_response(200, [], content_length=0)
            if conn.keep_alive:
                out.append(event)
                conn.start_next_cycle()
                continue
        if event is NEED_DATA or event is PAUSED:
            out.append(event)
            return out
        out.append(event)
        if isinstance(event, Rejected | ConnectionClosed):
            return out


def verdict(data: bytes | list[bytes], limits: EngineLimits | None = None) -> int | None:
    """The status of the rejection ``data`` ends in, or ``None`` when it was accepted."""
    last = events(data, limits)[-1]
    return last.status if isinstance(last, Rejected) else None


def requests_of(out: list[object]) -> list[Request]:
    return [event for event in out if isinstance(event, Request)]


def post(*headers: bytes, body: bytes = b"", version: bytes = b"1.1", method: bytes = b"POST") -> bytes:
    lines = [method + b" /public/x HTTP/" + version, b"Host: api.example", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# -- framing rules, sans-I/O -------------------------------------------------------------------------

REFUSED: list[tuple[str, bytes, int]] = [
    # Content-Length with Transfer-Encoding, in every order and spelling (CL.TE / TE.CL)
    ("cl-te", post(b"Content-Length: 4", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + HIDDEN), 400),
    ("te-cl", post(b"Transfer-Encoding: chunked", b"Content-Length: 4", body=b"0\r\n\r\n" + HIDDEN), 400),
    (
        "cl-te-0",
        post(b"Content-Length: 0", b"Transfer-Encoding: chunked", body=b"5\r\nhello\r\n0\r\n\r\n"),
        400,
    ),
    # Transfer-Encoding that is not exactly "chunked" (TE.TE obfuscations)
    ("te-xchunked", post(b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n"), 501),
    ("te-chunked-x", post(b"Transfer-Encoding: chunkedx", body=b"0\r\n\r\n"), 501),
    ("te-chunked-identity", post(b"Transfer-Encoding: chunked, identity", body=b"0\r\n\r\n"), 400),
    ("te-identity", post(b"Transfer-Encoding: identity", body=b"0\r\n\r\n"), 501),
    ("te-gzip-chunked", post(b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"), 501),
    ("te-comma-chunked", post(b"Transfer-Encoding: ,chunked", body=b"0\r\n\r\n"), 501),
    (
        "te-duplicate",
        post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        400,
    ),
    ("te-split", post(b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 501),
    ("te-empty", post(b"Transfer-Encoding:", body=b"0\r\n\r\n"), 400),
    ("te-space-before-colon", post(b"Transfer-Encoding : chunked", body=b"0\r\n\r\n"), 400),
    ("te-vertical-tab", post(b"Transfer-Encoding:\x0bchunked", body=b"0\r\n\r\n"), 400),
    ("te-obs-fold", post(b"Transfer-Encoding:", b" chunked", body=b"0\r\n\r\n"), 400),
    ("te-http-1.0", post(b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + HIDDEN, version=b"1.0"), 400),
    (
        "te-http-1.0-with-cl",
        post(b"Transfer-Encoding: chunked", b"Content-Length: 5", body=b"0\r\n\r\n", version=b"1.0"),
        400,
    ),
    ("te-nul", post(b"Transfer-Encoding: chunked\x00", body=b"0\r\n\r\n"), 400),
    # Content-Length that is not one run of digits
    ("cl-plus", post(b"Content-Length: +5", body=b"hello"), 400),
    ("cl-minus", post(b"Content-Length: -5", body=b"hello"), 400),
    ("cl-hex", post(b"Content-Length: 0x5", body=b"hello"), 400),
    ("cl-list", post(b"Content-Length: 5, 5", body=b"hello"), 400),
    ("cl-duplicate", post(b"Content-Length: 5", b"Content-Length: 5", body=b"hello"), 400),
    ("cl-different", post(b"Content-Length: 5", b"Content-Length: 6", body=b"hello!"), 400),
    ("cl-inner-space", post(b"Content-Length: 1 0", body=b"0123456789"), 400),
    ("cl-overflow", post(b"Content-Length: 18446744073709551621", body=b"hello"), 400),
    ("cl-huge", post(b"Content-Length: 99999999999999999999999999", body=b"hello"), 400),
    ("cl-empty", post(b"Content-Length:", body=b""), 400),
    ("cl-fraction", post(b"Content-Length: 5.0", body=b"hello"), 400),
    ("cl-too-large", post(b"Content-Length: 10485761"), 413),
    # line endings and field syntax
    ("bare-cr-request-line", b"GET /public/x HTTP/1.1\rHost: api.example\r\n\r\n", 400),
    (
        "bare-cr-in-field",
        b"GET /public/x HTTP/1.1\r\nHost: api.example\r\nX: a\rX-Bastion-Subject: root\r\n\r\n",
        400,
    ),
    ("bare-lf-request-line", b"GET /public/x HTTP/1.1\nHost: api.example\r\n\r\n", 400),
    ("bare-lf-in-fields", b"GET /public/x HTTP/1.1\r\nHost: api.example\nX: 1\r\n\r\n", 400),
    ("bare-lf-end", b"GET /public/x HTTP/1.1\r\nHost: api.example\n\n", 400),
    ("space-in-name", b"GET /public/x HTTP/1.1\r\nHost: api.example\r\nX Bastion Subject: root\r\n\r\n", 400),
    ("control-in-name", b"GET /public/x HTTP/1.1\r\nHost: api.example\r\nX-\x01Bastion: root\r\n\r\n", 400),
    ("empty-name", b"GET /public/x HTTP/1.1\r\nHost: api.example\r\n: root\r\n\r\n", 400),
    (
        "obs-fold",
        b"GET /public/x HTTP/1.1\r\nHost: api.example\r\nX-A: 1\r\n X-Bastion-Subject: root\r\n\r\n",
        400,
    ),
    ("leading-space-field", b"GET /public/x HTTP/1.1\r\n Host: api.example\r\n\r\n", 400),
    ("nul-in-value", b"GET /public/x HTTP/1.1\r\nHost: api.example\r\nX: a\x00b\r\n\r\n", 400),
    ("nul-in-target", b"GET /public/x\x00 HTTP/1.1\r\nHost: api.example\r\n\r\n", 400),
    ("del-in-value", b"GET /public/x HTTP/1.1\r\nHost: api.example\r\nX: a\x7fb\r\n\r\n", 400),
    ("space-in-target", b"GET /public/x /admin HTTP/1.1\r\nHost: api.example\r\n\r\n", 400),
    # chunked body syntax
    (
        "chunk-size-overflow",
        post(b"Transfer-Encoding: chunked", body=b"FFFFFFFFFFFFFFFFF1\r\nx\r\n0\r\n\r\n"),
        400,
    ),
    (
        "chunk-size-16-digits",
        post(b"Transfer-Encoding: chunked", body=b"10000000000000001\r\nx\r\n0\r\n\r\n"),
        400,
    ),
    ("chunk-size-0x", post(b"Transfer-Encoding: chunked", body=b"0x5\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-negative", post(b"Transfer-Encoding: chunked", body=b"-1\r\nx\r\n0\r\n\r\n"), 400),
    ("chunk-size-space", post(b"Transfer-Encoding: chunked", body=b"5 \r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-bare-lf", post(b"Transfer-Encoding: chunked", body=b"5\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-data-bare-lf", post(b"Transfer-Encoding: chunked", body=b"5\r\nhello\n0\r\n\r\n"), 400),
    ("chunk-data-too-long", post(b"Transfer-Encoding: chunked", body=b"3\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-ext-bare-lf", post(b"Transfer-Encoding: chunked", body=b"5;a\nb\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-ext-bare-cr", post(b"Transfer-Encoding: chunked", body=b"5;a\rb\r\nhello\r\n0\r\n\r\n"), 400),
    ("last-chunk-bare-lf", post(b"Transfer-Encoding: chunked", body=b"0\n\n" + HIDDEN), 400),
    ("trailer-obs-fold", post(b"Transfer-Encoding: chunked", body=b"0\r\nX: 1\r\n folded\r\n\r\n"), 400),
    # versions and methods
    ("http-0.9", b"GET /public/x\r\n\r\n", 505),
    ("http-2.0", b"GET /public/x HTTP/2.0\r\nHost: api.example\r\n\r\n", 505),
    ("http-1.2", b"GET /public/x HTTP/1.2\r\nHost: api.example\r\n\r\n", 400),
    ("http-lowercase", b"GET /public/x http/1.1\r\nHost: api.example\r\n\r\n", 400),
    ("prism", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    ("connect", b"CONNECT internal:22 HTTP/1.1\r\nHost: internal:22\r\n\r\n", 501),
    ("lowercase-method", b"get /public/x HTTP/1.1\r\nHost: api.example\r\n\r\n", 501),
    ("unknown-method", b"FOO /public/x HTTP/1.1\r\nHost: api.example\r\n\r\n", 501),
    (
        "upgrade-websocket",
        get(b"/public/x", b"Upgrade: websocket", close=False).replace(
            b"\r\n\r\n", b"\r\nConnection: Upgrade\r\n\r\n"
        ),
        501,
    ),
    (
        "upgrade-h2c",
        get(b"/public/x", b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA", close=False).replace(
            b"\r\n\r\n", b"\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n"
        ),
        501,
    ),
    # Host (RFC 9112 §3.2)
    ("host-missing", b"GET /public/x HTTP/1.1\r\n\r\n", 400),
    ("host-duplicate", b"GET /public/x HTTP/1.1\r\nHost: api.example\r\nHost: internal\r\n\r\n", 400),
    ("host-duplicate-case", b"GET /public/x HTTP/1.1\r\nHost: api.example\r\nhOsT: api.example\r\n\r\n", 400),
    *(
        (f"host-invalid-{i}", b"GET /public/x HTTP/1.1\r\nHost: " + host + b"\r\n\r\n", 400)
        for i, host in enumerate(
            [
                b"api.example@internal",
                b"user:pass@internal",
                b"api.example internal",
                b"api.example\tinternal",
                b"api.example/admin",
                b"api.example\\admin",
                b"api.example?x",
                b"api.example#x",
                b"api.example:80:81",
                b"api.example:8o",
                b"[::1",
                b"::1",
                b"[::1]x",
                b"api.example%",
                b"api.example%zz",
                b"<script>",
                b'"api.example"',
                b"api.\xc3\xa9xample",
            ]
        )
    ),
]


@pytest.mark.parametrize(
    "host",
    [
        b"api.example",
        b"api.example:8080",
        b"API.Example",
        b"127.0.0.1",
        b"127.0.0.1:80",
        b"[::1]",
        b"[::1]:8080",
        b"[fe80::1%25eth0]",
        b"xn--caf-dma.example",
        b"a-b_c~d.example",
        b"caf%C3%A9.example",
        b"",
        b"api.example:",
    ],
)
def test_valid_hosts_are_accepted(host: bytes) -> None:
    [request] = requests_of(events(b"GET /public/x HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"))
    assert request.host == host


@pytest.mark.parametrize(("data", "status"), [pytest.param(d, s, id=i) for i, d, s in REFUSED])
def test_malformed_framing_is_refused(data: bytes, status: int) -> None:
    assert verdict(data) == status


def test_refusal_stops_the_connection_before_any_hidden_request() -> None:
    for _, data, _ in REFUSED:
        out = events(data)
        assert isinstance(out[-1], Rejected)
        for request in requests_of(out):
            assert not request.target.startswith(b"/admin"), data


def test_chunked_body_is_reframed_and_the_next_request_stays_separate() -> None:
    """A chunked body with extensions, leading zeros and trailers is decoded to its data only;
    what follows the last chunk is the next request, handed out after the first is answered."""
    body = b'005;ext=1;q="x"\r\nhello\r\n0;last\r\nX-Bastion-Subject: root\r\nX-Trailer: 1\r\n\r\n'
    out = events(post(b"Transfer-Encoding: chunked", body=body) + HIDDEN)
    first, second = requests_of(out)
    assert first.chunked
    assert b"".join(event.data for event in out if isinstance(event, Data)) == b"hello"
    assert (b"x-bastion-subject", b"root") not in first.headers
    assert second.target == b"/admin/users"
    assert out.index(second) > next(i for i, e in enumerate(out) if isinstance(e, EndOfMessage))


def test_content_length_body_ends_where_it_says() -> None:
    out = events(post(b"Content-Length: 5", body=b"hello" + HIDDEN))
    first, second = requests_of(out)
    assert first.content_length == 5
    assert second.target == b"/admin/users"


# -- end to end: what the upstream receives ------------------------------------------------------------


async def _nothing_hidden_reached(stack: Stack) -> None:
    await asyncio.sleep(0)
    assert stack.upstream.errors == []
    for received in stack.upstream.requests:
        assert not received.target.startswith(b"/admin"), received
    assert b"X-Bastion-Subject: root" not in stack.upstream.all_bytes
    assert b"/admin/users" not in stack.upstream.all_bytes


@pytest.mark.anyio
@pytest.mark.parametrize(
    "data",
    [
        b"GET /public/x HTTP/1.1\r\nHost: api.example@internal\r\nConnection: close\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\nHost: internal /admin\r\nConnection: close\r\n\r\n",
        b"GET http://internal/admin/users HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n",
        b"GET //internal/admin/users HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\nHost: api.example\r\nHost: internal\r\nConnection: close\r\n\r\n",
    ],
)
async def test_host_confusion_never_reaches_the_upstream(stack: Stack, data: bytes) -> None:
    reply = await stack.send(data)
    assert reply.status == 400
    assert stack.upstream.requests == []


@pytest.mark.anyio
async def test_the_upstream_gets_the_client_host_only_when_valid(stack: Stack) -> None:
    reply = await stack.send(b"GET /public/x HTTP/1.1\r\nHost: api.example:8080\r\nConnection: close\r\n\r\n")
    assert reply.status == 200
    [received] = stack.upstream.requests
    assert received.header(b"host") == [b"api.example:8080"]


@pytest.mark.anyio
async def test_http10_chunked_never_reaches_the_upstream(stack: Stack) -> None:
    data = (
        b"POST /public/x HTTP/1.0\r\nHost: api.example\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        + HIDDEN
    )
    reply = await stack.send(data)
    assert reply.status == 400
    assert stack.upstream.requests == []
    await _nothing_hidden_reached(stack)


# -- chunked framing overhead ----------------------------------------------------------------------

CHUNKED_HEAD = post(b"Transfer-Encoding: chunked")
BLOCK = 64 * 1024


@pytest.mark.parametrize(
    "pieces",
    [
        pytest.param([b"0\r\nX-Big: "] + [b"a" * BLOCK] * 64, id="one-huge-trailer-value"),
        pytest.param([b"0\r\n"] + [b"X-T: 1\r\n" * 8192] * 64, id="endless-trailer-fields"),
        pytest.param([b"1;"] + [b"e" * BLOCK] * 64, id="endless-chunk-extension"),
        pytest.param([b"1;" + b"e=v;" * 16384 + b"\r\nx\r\n"] * 64, id="many-extensions"),
        pytest.param([b"1\r\nx\r\n" * 10_000] * 64, id="one-byte-chunks"),
        pytest.param([b"0" * BLOCK] * 64, id="endless-leading-zeros"),
    ],
)
def test_chunk_metadata_and_trailers_are_bounded(pieces: list[bytes]) -> None:
    """Bytes that are neither content nor bounded by the header limits end the request (400)
    within a few blocks, instead of being skipped or accumulated for as long as they come."""
    conn = ServerConnection(EngineLimits())
    conn.receive_data(CHUNKED_HEAD)
    fed = 0
    for piece in pieces:
        conn.receive_data(piece)
        fed += len(piece)
        out = []
        while (event := conn.next_event()) not in (NEED_DATA, PAUSED):
            out.append(event)
            if isinstance(event, Rejected):
                assert event.status == 400
                assert fed <= 2 * BLOCK
                return
    raise AssertionError("never refused")


def test_ordinary_chunking_with_extensions_and_trailers_passes() -> None:
    chunks = b"".join(b"%x;name=value\r\n%s\r\n" % (size, b"d" * size) for size in (7, 16, 100, 1, 4096) * 50)
    trailers = b"0\r\n" + b"".join(b"X-Trailer-%d: %s\r\n" % (i, b"v" * 100) for i in range(50)) + b"\r\n"
    pieces = [chunks[i : i + 1000] for i in range(0, len(chunks), 1000)] + [trailers]
    out = events([CHUNKED_HEAD, *pieces])
    assert not any(isinstance(e, Rejected) for e in out)
    assert any(isinstance(e, EndOfMessage) for e in out)
    assert sum(len(e.data) for e in out if isinstance(e, Data)) == (7 + 16 + 100 + 1 + 4096) * 50


@pytest.mark.anyio
async def test_an_endless_trailer_is_cut_and_the_gateway_keeps_serving(stack: Stack) -> None:
    client = await stack.client()
    try:
        await client.send(
            b"POST /public/x HTTP/1.1\r\nHost: api.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        await client.send(b"5\r\nhello\r\n0\r\nX-Bastion-Subject: ")
        answer = asyncio.ensure_future(client.read_response())
        for _ in range(64):
            if answer.done():
                break
            try:
                await client.send(b"a" * BLOCK)
            except ConnectionError:
                break
            await asyncio.sleep(0.01)
        reply = await asyncio.wait_for(answer, 5)
        assert reply.status == 400
    finally:
        await client.aclose()
    assert (await stack.send(get(b"/public/y"))).status == 200
    for received in stack.upstream.requests:
        assert b"root" not in b"".join(value for _, value in received.headers)


# -- content where no content belongs (CL.0) ---------------------------------------------------------


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"TRACE"])
@pytest.mark.parametrize(
    "framing",
    [
        pytest.param((b"Content-Length: %d" % len(HIDDEN),), id="content-length"),
        pytest.param((b"Transfer-Encoding: chunked",), id="chunked"),
    ],
)
def test_content_in_get_head_or_trace_is_refused(method: bytes, framing: tuple[bytes, ...]) -> None:
    """RFC 9110 §9.3.1/§9.3.2: content in GET or HEAD "has no generally defined semantics" and
    servers that ignore it read it as the next request (the CL.0 desync); §9.3.8: "A client MUST
    NOT send content in a TRACE request". Refused before anything is forwarded."""
    body = HIDDEN if framing[0].startswith(b"Content") else b"%x\r\n%s\r\n0\r\n\r\n" % (len(HIDDEN), HIDDEN)
    assert verdict(post(*framing, body=body, method=method)) == 400


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"DELETE", b"OPTIONS"])
def test_an_empty_content_length_is_fine_on_any_method(method: bytes) -> None:
    out = events(post(b"Content-Length: 0", method=method) + HIDDEN)
    assert [request.method for request in requests_of(out)] == [method, b"GET"]


@pytest.mark.anyio
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
async def test_content_on_get_never_reaches_the_upstream(stack: Stack, method: bytes) -> None:
    data = (
        method
        + b" /public/x HTTP/1.1\r\nHost: api.example\r\nContent-Length: %d\r\n\r\n" % len(HIDDEN)
        + HIDDEN
    )
    raw = await stack.exchange(data)
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert raw.count(b"HTTP/1.1 ") == 1
    assert stack.upstream.requests == []
    await _nothing_hidden_reached(stack)


@pytest.mark.anyio
async def test_a_post_body_is_one_request_to_the_upstream(stack: Stack) -> None:
    """A body that looks like a request stays a body: the upstream parses one request, and the
    request after it on the client connection is authorized on its own (401, not forwarded)."""
    data = (
        b"POST /public/x HTTP/1.1\r\nHost: api.example\r\nContent-Length: %d\r\n\r\n" % len(HIDDEN) + HIDDEN
    )
    raw = await stack.exchange(data + HIDDEN.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    assert raw.count(b"HTTP/1.1 200 ") == 1
    assert raw.count(b"HTTP/1.1 401 ") == 1
    [received] = stack.upstream.requests
    assert received.method == b"POST"
    assert received.body == HIDDEN
    assert stack.upstream.errors == []


def test_pipelined_chunked_bodies_in_shared_reads_are_not_overhead() -> None:
    """The tail of one body and the head of the next request arriving in one read are not
    counted as chunk metadata of the next."""
    body = b"c350\r\n" + b"d" * 50_000 + b"\r\n0\r\n\r\n"
    stream = (CHUNKED_HEAD + body) * 4
    out = events([stream[i : i + 65536] for i in range(0, len(stream), 65536)])
    assert not any(isinstance(e, Rejected) for e in out)
    assert len(requests_of(out)) == 4
    assert sum(len(e.data) for e in out if isinstance(e, Data)) == 200_000


@pytest.mark.anyio
async def test_every_refused_payload_is_refused_on_the_wire_too(stack: Stack) -> None:
    """The whole matrix over real sockets: the status the core decided reaches the client, the
    connection closes, and the upstream never sees a hidden request or an unparseable byte."""
    for name, data, status in REFUSED:
        raw = await stack.exchange(data + HIDDEN)
        assert raw.startswith(b"HTTP/1.1 %d " % status), (name, raw[:80])
        assert raw.count(b"HTTP/1.1 ") == 1, name
        assert b"connection: close" in raw.partition(b"\r\n\r\n")[0], name
    await _nothing_hidden_reached(stack)


@pytest.mark.anyio
async def test_pipelined_requests_are_each_authorized(stack: Stack) -> None:
    token = stack.token(scope="catalog:read")
    pipeline = (
        get(b"/public/1", close=False)
        + HIDDEN
        + get(b"/catalog/items", bearer(token), close=False)
        + get(b"/admin/users", bearer(token), close=False)
        + get(b"/public/2")
    )
    raw = await stack.exchange(pipeline)
    statuses = [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]
    assert statuses == [200, 401, 200, 403, 200]
    assert [r.target for r in stack.upstream.requests] == [b"/public/1", b"/catalog/items", b"/public/2"]
    assert all(r.header(b"x-bastion-subject") in ([], [b"alice"]) for r in stack.upstream.requests)
    await _nothing_hidden_reached(stack)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"OPTIONS * HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n", 400),
        (b"CONNECT api.example:443 HTTP/1.1\r\nHost: api.example:443\r\n\r\n", 501),
        (b"TRACE /public/x HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n", 405),
        (b"GET api.example:443 HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n", 400),
    ],
)
async def test_special_targets_and_methods(stack: Stack, data: bytes, status: int) -> None:
    reply = await stack.send(data)
    assert reply.status == status
    assert stack.upstream.requests == []
