"""The client side of the front over real sockets: limits, timeouts, replies, lifecycle, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bastion.gateway.contract import Forward
from bastion.gateway.contract import Outcome
from bastion.gateway.contract import Reply
from bastion.gateway.contract import RequestHead
from bastion.gateway.limits import EngineLimits
from bastion.gateway.server import GatewayServer
from bastion.gateway.tls import make_server_ssl_context
from bastion.gateway.upstream import UpstreamGroup

from .servers import RawClient
from .servers import Upstream

GET = b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n"


async def serve(
    gateways: list[GatewayServer], handler, limits: EngineLimits | None = None, **kw
) -> GatewayServer:
    gateway = GatewayServer(handler, limits=limits or EngineLimits(), **kw)
    await gateway.start("127.0.0.1", 0)
    gateways.append(gateway)
    return gateway


def teapot(head: RequestHead) -> Reply:
    return Reply(status=418, headers=[(b"content-type", b"text/plain")], body=b"short and stout")


# -- limits ------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 33000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10485761\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n", 400),
    ],
)
async def test_limits_and_malformed_requests(gateways, raw: bytes, status: int) -> None:
    gateway = await serve(gateways, teapot)
    client = await RawClient.connect(gateway.port)
    reply = await client.request(raw)
    assert reply.status == status
    assert reply.header(b"content-type") == b"application/problem+json"
    assert reply.header(b"connection") == b"close"
    assert reply.json()["status"] == status
    assert await client.closed()
    await client.aclose()


@pytest.mark.anyio
async def test_chunked_body_over_the_limit_is_413(upstream: Upstream, gateway_for) -> None:
    gateway, handler = await gateway_for([upstream.address], limits=EngineLimits(max_body=1000))
    client = await RawClient.connect(gateway.port)
    await client.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    await client.send(b"400\r\n" + b"x" * 1024 + b"\r\n")
    reply = await client.read_response()
    assert reply.status == 413
    assert await client.closed()
    assert handler.outcomes[0].status == 413
    await client.aclose()


@pytest.mark.anyio
async def test_header_timeout_answers_408(gateways) -> None:
    gateway = await serve(gateways, teapot, EngineLimits(header_timeout=0.2))
    client = await RawClient.connect(gateway.port)
    await client.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
    reply = await client.read_response()
    assert reply.status == 408
    assert await client.closed()
    await client.aclose()


@pytest.mark.anyio
async def test_silent_connection_is_closed_after_header_timeout(gateways) -> None:
    gateway = await serve(gateways, teapot, EngineLimits(header_timeout=0.2))
    client = await RawClient.connect(gateway.port)
    assert await client.closed()
    await client.aclose()


@pytest.mark.anyio
async def test_header_timeout_runs_from_the_first_byte_of_the_next_request(gateways) -> None:
    gateway = await serve(gateways, teapot, EngineLimits(header_timeout=0.2, keepalive_timeout=30))
    client = await RawClient.connect(gateway.port)
    assert (await client.request(GET)).status == 418
    await client.send(b"GET / HTTP/1.1\r\n")
    assert (await client.read_response()).status == 408
    await client.aclose()


@pytest.mark.anyio
async def test_idle_keep_alive_timeout(gateways) -> None:
    gateway = await serve(gateways, teapot, EngineLimits(keepalive_timeout=0.2))
    client = await RawClient.connect(gateway.port)
    assert (await client.request(GET)).status == 418
    assert await client.closed()
    await client.aclose()


@pytest.mark.anyio
async def test_body_timeout(upstream: Upstream, gateway_for) -> None:
    gateway, handler = await gateway_for([upstream.address], limits=EngineLimits(body_timeout=0.2))
    client = await RawClient.connect(gateway.port)
    await client.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    reply = await client.read_response()
    assert reply.status == 408
    assert await client.closed()
    assert handler.outcomes[0].error == "client_timeout"
    await client.aclose()


# -- replies -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_reply_keeps_the_connection_and_reports(gateways) -> None:
    outcomes: list[Outcome] = []

    def handler(head: RequestHead) -> Reply:
        return Reply(
            status=401, headers=[(b"www-authenticate", b"Bearer")], body=b"{}", on_complete=outcomes.append
        )

    gateway = await serve(gateways, handler)
    client = await RawClient.connect(gateway.port)
    for _ in range(2):
        reply = await client.request(GET)
        assert reply.status == 401
        assert reply.header(b"www-authenticate") == b"Bearer"
        assert reply.header(b"content-length") == b"2"
    # A small unread body is discarded and the connection kept.
    reply = await client.request(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
    assert reply.status == 401
    assert (await client.request(GET)).status == 401
    assert [o.status for o in outcomes] == [401, 401, 401, 401]
    assert outcomes[0].bytes_sent == 2
    assert outcomes[0].upstream is None
    await client.aclose()


@pytest.mark.anyio
async def test_reply_to_expect_continue_skips_the_body(gateways) -> None:
    gateway = await serve(gateways, teapot)
    client = await RawClient.connect(gateway.port)
    await client.send(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5000000\r\n\r\n")
    reply = await client.read_response()
    assert reply.status == 418  # no 100 Continue first
    assert reply.header(b"connection") == b"close"
    assert await client.closed()
    await client.aclose()


@pytest.mark.anyio
async def test_async_handler(upstream: Upstream, gateways, groups) -> None:
    group = UpstreamGroup("g", [upstream.address])
    groups.append(group)

    async def handler(head: RequestHead) -> Forward | Reply:
        await asyncio.sleep(0)
        if head.target == b"/deny":
            return Reply(status=403)
        return Forward(upstream=group, target=head.target, headers=head.headers)

    gateway = await serve(gateways, handler)
    client = await RawClient.connect(gateway.port)
    assert (await client.request(b"GET /deny HTTP/1.1\r\nHost: a\r\n\r\n")).status == 403
    assert (await client.request(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")).json()[
        "body_len"
    ] == 2
    await client.aclose()


@pytest.mark.anyio
async def test_handler_failure_is_500(gateways, caplog) -> None:
    def handler(head: RequestHead) -> Reply:
        raise RuntimeError("policy bug with secret detail")

    gateway = await serve(gateways, handler)
    client = await RawClient.connect(gateway.port)
    reply = await client.request(GET)
    assert reply.status == 500
    assert b"secret" not in reply.body
    assert (await client.request(GET)).status == 500
    await client.aclose()


# -- lifecycle ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_set_handler_swaps_for_new_requests_only(upstream: Upstream, gateways, groups) -> None:
    group = UpstreamGroup("g", [upstream.address])
    groups.append(group)

    def forward(head: RequestHead) -> Forward:
        return Forward(upstream=group, target=head.target, headers=head.headers)

    gateway = await serve(gateways, forward)
    slow = await RawClient.connect(gateway.port)
    await slow.send(b"GET /sleep/0.2 HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0.05)
    gateway.set_handler(teapot)
    other = await RawClient.connect(gateway.port)
    assert (await other.request(GET)).status == 418
    assert (await slow.read_response()).body == b"slept"
    assert (await slow.request(GET)).status == 418
    await slow.aclose()
    await other.aclose()


@pytest.mark.anyio
async def test_close_lets_in_flight_requests_finish(upstream: Upstream, groups) -> None:
    group = UpstreamGroup("g", [upstream.address])
    groups.append(group)

    def forward(head: RequestHead) -> Forward:
        return Forward(upstream=group, target=head.target, headers=head.headers)

    gateway = GatewayServer(forward, limits=EngineLimits())
    await gateway.start("127.0.0.1", 0)
    port = gateway.port
    busy = await RawClient.connect(port)
    idle = await RawClient.connect(port)
    await busy.send(b"GET /sleep/0.2 HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(gateway.close(grace=5))
    reply = await busy.read_response()
    assert reply.body == b"slept"
    assert reply.header(b"connection") == b"close"
    assert await busy.closed()
    assert await idle.closed()
    await closing
    with pytest.raises(OSError):
        await RawClient.connect(port)
    await busy.aclose()
    await idle.aclose()


@pytest.mark.anyio
async def test_reuse_port_lets_two_servers_share_a_port(gateways) -> None:
    first = await serve(gateways, teapot)
    second = GatewayServer(teapot, limits=EngineLimits())
    await second.start("127.0.0.1", first.port, reuse_port=True)
    gateways.append(second)
    assert second.port == first.port


def self_signed(tmp_path) -> tuple[str, str]:
    """A self-signed certificate for ``localhost`` (and 127.0.0.1): (cert path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp_path / "cert.pem"
    key_path = tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)


@pytest.mark.anyio
async def test_tls_termination(upstream: Upstream, gateways, groups, tmp_path) -> None:
    cert_path, key_path = self_signed(tmp_path)
    group = UpstreamGroup("g", [upstream.address])
    groups.append(group)
    seen: list[RequestHead] = []

    def forward(head: RequestHead) -> Forward:
        seen.append(head)
        return Forward(upstream=group, target=head.target, headers=head.headers)

    gateway = await serve(gateways, forward, ssl=make_server_ssl_context(cert_path, key_path))
    client_context = ssl.create_default_context(cafile=cert_path)
    client = await RawClient.connect(gateway.port, ssl_context=client_context)
    for _ in range(2):
        reply = await client.request(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        assert reply.json()["body_len"] == 3
    assert seen[0].tls
    await client.aclose()


@pytest.mark.anyio
async def test_https_upstream(gateways, groups, tmp_path) -> None:
    cert_path, key_path = self_signed(tmp_path)
    secure = Upstream()
    await secure.start(ssl_context=make_server_ssl_context(cert_path, key_path))
    try:
        trusted = ssl.create_default_context(cafile=cert_path)
        group = UpstreamGroup("g", [f"https://127.0.0.1:{secure.port}"], tls=trusted)
        untrusted = UpstreamGroup("u", [f"https://127.0.0.1:{secure.port}"])
        groups.extend([group, untrusted])

        def forward(head: RequestHead) -> Forward:
            chosen = untrusted if head.target == b"/echo?untrusted" else group
            return Forward(upstream=chosen, target=head.target, headers=head.headers)

        gateway = await serve(gateways, forward)
        client = await RawClient.connect(gateway.port)
        for _ in range(2):
            reply = await client.request(GET)
            assert reply.json().get("connection") == 1, reply
        # The system trust store does not know the self-signed certificate: 502, not plaintext.
        assert (await client.request(b"GET /echo?untrusted HTTP/1.1\r\nHost: a\r\n\r\n")).status == 502
        await client.aclose()
    finally:
        await secure.stop()


async def _dribble(gateway_port: int, seconds: float) -> int | None:
    """Send a body one byte every 0.1 s; the status the gateway answers, or None if it did not."""
    client = await RawClient.connect(gateway_port)
    await client.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
    answer = asyncio.ensure_future(client.read_response())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    try:
        while loop.time() < deadline and not answer.done():
            with contextlib.suppress(ConnectionError, OSError):
                await client.send(b"x")
            await asyncio.wait([answer], timeout=0.1)
        if not answer.done():
            return None
        return answer.result().status
    finally:
        answer.cancel()
        with contextlib.suppress(BaseException):
            await answer
        await client.aclose()


@pytest.mark.anyio
async def test_a_body_below_the_minimum_rate_is_cut(upstream: Upstream, gateway_for) -> None:
    # Each byte arrives well within body_timeout, so only the average rate can stop it:
    # 10 bytes/s against a minimum of 100 bytes/s after a 0.3 s allowance.
    slow, _ = await gateway_for([upstream.address], limits=EngineLimits(body_timeout=0.3, min_body_rate=100))
    assert await _dribble(slow.port, 3.0) == 408
    # With the rate check off the same client is still being read after 1.5 s.
    patient, _ = await gateway_for([upstream.address], limits=EngineLimits(body_timeout=0.3, min_body_rate=0))
    assert await _dribble(patient.port, 1.5) is None
