"""The gateway through ``bastion serve``: real processes and sockets on 127.0.0.1.

One ``bastion serve`` runs the authorization server and ``[gateway]`` (the issuer is the
authorization server itself, its JWKS found through RFC 8414 metadata); the upstream is a
separate process (``gw_upstream.py``) that records every request it receives. Requests that must
be refused are written as raw bytes, and each carries a unique ``X-Probe`` header so a test can
assert that the upstream never saw it.

What the handler-level tests in ``tests/gateway/policy/`` already cover (every canonicalisation
rule, every policy branch) is not repeated here; this file checks that the composed processes
hold the same line: path-bypass forms, spoofed identity headers, revocations fed from the
authorization server, key rotation, reloads under load and ``--workers 2``.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.gw_stack import ROUTES
from tests.e2e.gw_stack import GatewayStack
from tests.e2e.gw_stack import KeepAliveClient
from tests.e2e.gw_stack import child_pids
from tests.e2e.gw_stack import get
from tests.e2e.gw_stack import kid_of
from tests.e2e.gw_stack import listening_pids
from tests.e2e.gw_stack import owner_of_connection
from tests.e2e.gw_stack import raw_request
from tests.e2e.gw_stack import revoke
from tests.e2e.harness import Bastion

pytestmark = pytest.mark.slow

#: How soon a revocation at the authorization server must reach the gateway.
REVOCATION_DEADLINE = 1.0


Stopping = list[Callable[[], None]]


@pytest.fixture(scope="module")
def stopping() -> Iterator[Stopping]:
    """Waits to run at the end of the module. Each test signals its processes to stop when it
    ends and leaves the wait here, so the graceful shutdowns overlap instead of adding up."""
    waits: Stopping = []
    yield waits
    for wait in waits:
        wait()


def retire(stack: GatewayStack, stopping: Stopping) -> None:
    stack.terminate()
    stopping.append(stack.wait)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, stopping: Stopping) -> Iterator[GatewayStack]:
    """The shared stack: every test here leaves its routes as it found them (or only adds)."""
    # Every attack here comes from 127.0.0.1 and is pinned by its own refusal: automatic bans
    # (tested in test_bans_serve) would answer the later ones with 403.
    instance = GatewayStack(tmp_path_factory.mktemp("gateway"), bans="[gateway.bans]\nenabled = false\n")
    yield instance
    retire(instance, stopping)


@pytest.fixture(scope="module")
def reader_token(stack: GatewayStack) -> str:
    return stack.token(stack.reader)


def probe() -> str:
    return uuid.uuid4().hex


def seen(stack: GatewayStack, probe_id: str) -> list[dict[str, object]]:
    """The upstream's records of requests that carried ``X-Probe: probe_id``."""
    return [
        record
        for record in stack.upstream.records()
        if any(name.lower() == "x-probe" and value == probe_id for name, value in record["headers"])
    ]


def header_values(record: dict[str, object], name: str) -> list[str]:
    headers: list[list[str]] = record["headers"]  # type: ignore[assignment]
    return [value for key, value in headers if key.lower() == name]


def raw_get(stack: GatewayStack, target: bytes, token: str | None, probe_id: str, extra: bytes = b"") -> int:
    auth = b"Authorization: Bearer " + token.encode() + b"\r\n" if token else b""
    head = b"GET " + target + b" HTTP/1.1\r\nHost: e2e\r\n" + auth
    request = head + b"X-Probe: " + probe_id.encode() + b"\r\n" + extra + b"Connection: close\r\n\r\n"
    status, _, _ = raw_request(stack.gateway_port, request)
    return status


# -- the composed stack works --------------------------------------------------------------------


def test_routes_scopes_and_identity_through_serve(stack: GatewayStack, reader_token: str) -> None:
    probe_id = probe()
    assert raw_get(stack, b"/api/orders?page=2", reader_token, probe_id) == 200
    [record] = seen(stack, probe_id)
    assert record["request_line"] == "GET /api/orders?page=2 HTTP/1.1"
    assert header_values(record, "x-bastion-subject") == [stack.reader.client_id]
    assert header_values(record, "x-bastion-client") == [stack.reader.client_id]
    assert header_values(record, "x-bastion-scopes") == ["orders:read"]
    assert header_values(record, "authorization") == []  # the token stays at the edge

    # Per-method scopes: the reader may read, not write; the writer may write.
    status, headers, _ = get(stack.gateway_port, "/api/orders", None)
    assert status == 401
    assert headers["www-authenticate"] == 'Bearer realm="e2e"'
    probe_id = probe()
    request = (
        f"POST /api/orders HTTP/1.1\r\nHost: e2e\r\nAuthorization: Bearer {reader_token}\r\n"
        f"X-Probe: {probe_id}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    )
    status, headers, _ = raw_request(stack.gateway_port, request.encode())
    assert status == 403
    assert 'error="insufficient_scope"' in headers["www-authenticate"]
    assert 'scope="orders:write"' in headers["www-authenticate"]
    assert seen(stack, probe_id) == []
    writer = stack.token(stack.writer)
    status, _, _ = raw_request(stack.gateway_port, request.replace(reader_token, writer).encode())
    assert status == 200
    assert seen(stack, probe_id)[0]["body_bytes"] == 2

    # The longest prefix wins: /api/admin needs "admin" even for GET.
    assert get(stack.gateway_port, "/api/admin/users", reader_token)[0] == 403
    assert get(stack.gateway_port, "/api/admin/users", stack.token(stack.admin))[0] == 200
    # auth = "none": no token needed, no identity forwarded.
    status, headers, body = get(stack.gateway_port, "/public/about")
    assert status == 200
    assert "x-bastion" not in body.decode().lower()
    assert headers["server"] == "bastion"
    assert "x-powered-by" not in headers  # the upstream's framework stays hidden


def test_post_with_a_body_and_a_fresh_token(stack: GatewayStack) -> None:
    """The body arrives while the token is being verified (not cached yet) and is still forwarded."""
    token = stack.token(stack.writer)  # never seen by the gateway
    probe_id = probe()
    request = (
        f"POST /api/orders HTTP/1.1\r\nHost: e2e\r\nAuthorization: Bearer {token}\r\n"
        f"X-Probe: {probe_id}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
    )
    client = KeepAliveClient(stack.gateway_port, timeout=3)
    try:
        client.sock.sendall(request.encode())
        status, _, _ = client.read_response()
    except TimeoutError:
        pytest.fail("no response within 3 s to a 2-byte POST")
    finally:
        client.close()
    assert status == 200
    assert seen(stack, probe_id)[0]["body_bytes"] == 2


# -- path-bypass forms ---------------------------------------------------------------------------

#: Targets a lenient gateway would route to ``/api`` (where the reader's token is enough) or to
#: ``/public`` while the upstream could act on ``/api/admin/...``; each must be refused with 400.
BYPASS_FORMS = [
    ("encoded-slash", b"/api/x%2F..%2Fadmin/users"),
    ("encoded-slash-lower", b"/api/x%2f..%2fadmin/users"),
    ("encoded-slash-from-public", b"/public%2F..%2Fapi/admin/users"),
    ("backslash", b"/api/x\\..\\admin/users"),
    ("encoded-backslash", b"/api/x%5C..%5Cadmin/users"),
    ("encoded-backslash-lower", b"/api/x%5c..%5cadmin/users"),
    ("encoded-nul", b"/api/admin%00/users"),
    ("encoded-nul-suffix", b"/api/orders%00/../admin/users"),
    ("matrix-semicolon", b"/public/..;/api/admin/users"),
    ("semicolon-in-segment", b"/api;x/admin/users"),
    ("encoded-semicolon", b"/api/x%3B/../admin/users"),
    ("fragment", b"/public#/../api/admin/users"),
    ("encoded-fragment", b"/public%23/../api/admin/users"),
    ("encoded-dot-dot", b"/public/%2e%2e/api/admin/users"),
    ("encoded-dot-dot-upper", b"/api/x/%2E%2E/admin/users"),
    ("half-encoded-dot-dot", b"/api/x/.%2e/admin/users"),
    ("dot-segment", b"/api/./admin/users"),
    ("dot-dot-segment", b"/public/../api/admin/users"),
    ("trailing-dot-dot", b"/api/admin/users/.."),
    ("double-slash-lead", b"//api/admin/users"),
    ("double-slash-inside", b"/api//admin/users"),
    ("double-encoded-slash", b"/api/x%252F..%252Fadmin/users"),
    ("double-encoded-dot", b"/api/x/%252e%252e/admin/users"),
    ("control-soh", b"/api/admin\x01/users"),
    ("control-del", b"/api/admin\x7f/users"),
    ("control-tab", b"/api/x\t/../admin/users"),
    ("encoded-newline", b"/api/admin%0A/users"),
    ("encoded-cr", b"/api/admin%0d/users"),
    ("non-ascii-byte", b"/api/admin\xc0\xae/users"),
    ("absolute-form", b"http://e2e/api/admin/users"),
    ("absolute-form-other-host", b"http://127.0.0.1:1/api/admin/users"),
    ("authority-form", b"127.0.0.1:80"),
    ("asterisk-form", b"*"),
]


@pytest.mark.parametrize("target", [t for _, t in BYPASS_FORMS], ids=[name for name, _ in BYPASS_FORMS])
def test_bypass_form_is_refused_and_never_reaches_the_upstream(
    stack: GatewayStack, reader_token: str, target: bytes
) -> None:
    probe_id = probe()
    assert raw_get(stack, target, reader_token, probe_id) == 400
    assert seen(stack, probe_id) == []


def test_bypass_probe_control(stack: GatewayStack, reader_token: str) -> None:
    """The same request with the canonical path does reach the upstream (the probe works)."""
    probe_id = probe()
    assert raw_get(stack, b"/api/orders", reader_token, probe_id) == 200
    assert len(seen(stack, probe_id)) == 1


@pytest.mark.parametrize(
    "query",
    [b"access_token=TOKEN", b"page=1&access_token=TOKEN", b"access%5Ftoken=TOKEN", b"access_%74oken=TOKEN"],
    ids=["plain", "second-parameter", "encoded-underscore", "encoded-letter"],
)
def test_token_in_the_query_is_refused(stack: GatewayStack, reader_token: str, query: bytes) -> None:
    # OAuth 2.1 §5.2 drops the query parameter: the request carries no credential the gateway
    # accepts, so it is 401 without an error code (RFC 6750 §3.1), and nothing is forwarded.
    probe_id = probe()
    target = b"/api/orders?" + query.replace(b"TOKEN", reader_token.encode())
    request = (
        f"GET {target.decode()} HTTP/1.1\r\nHost: e2e\r\nX-Probe: {probe_id}\r\nConnection: close\r\n\r\n"
    )
    status, headers, _ = raw_request(stack.gateway_port, request.encode())
    assert status == 401
    assert headers["www-authenticate"] == 'Bearer realm="e2e"'
    assert seen(stack, probe_id) == []


# -- spoofed identity headers --------------------------------------------------------------------

SPOOFED = (
    b"X-Bastion-Subject: root\r\n"
    b"x-bastion-subject: root-again\r\n"
    b"X-BASTION-SCOPES: admin orders:write\r\n"
    b"X-Bastion-Client: trusted-service\r\n"
    b"X-Forwarded-For: 203.0.113.7, 10.0.0.1\r\n"
    b"X-Real-IP: 203.0.113.7\r\n"
    b"Forwarded: for=203.0.113.7;proto=https\r\n"
    b"X-Forwarded-Proto: https\r\n"
    b"X-Forwarded-Host: admin.internal\r\n"
    b"X-Request-Id: chosen-by-client\r\n"
)


def test_spoofed_identity_headers_are_replaced(stack: GatewayStack, reader_token: str) -> None:
    probe_id = probe()
    assert raw_get(stack, b"/api/orders", reader_token, probe_id, SPOOFED) == 200
    [record] = seen(stack, probe_id)
    assert header_values(record, "x-bastion-subject") == [stack.reader.client_id]
    assert header_values(record, "x-bastion-client") == [stack.reader.client_id]
    assert header_values(record, "x-bastion-scopes") == ["orders:read"]
    assert header_values(record, "x-forwarded-for") == ["127.0.0.1"]
    assert header_values(record, "x-real-ip") == ["127.0.0.1"]
    assert header_values(record, "x-forwarded-proto") == ["http"]
    assert header_values(record, "x-forwarded-host") == ["e2e"]
    assert header_values(record, "forwarded") == []
    [request_id] = header_values(record, "x-request-id")
    assert request_id != "chosen-by-client"


def test_spoofed_identity_is_stripped_on_public_routes(stack: GatewayStack) -> None:
    probe_id = probe()
    assert raw_get(stack, b"/public/about", None, probe_id, SPOOFED) == 200
    [record] = seen(stack, probe_id)
    names = {name.lower() for name, _ in record["headers"]}  # type: ignore[attr-defined]
    assert not {name for name in names if name.startswith("x-bastion-")}
    assert header_values(record, "x-forwarded-for") == ["127.0.0.1"]


def test_spoofed_scopes_do_not_open_a_route(stack: GatewayStack, reader_token: str) -> None:
    probe_id = probe()
    assert raw_get(stack, b"/api/admin/users", reader_token, probe_id, SPOOFED) == 403
    assert raw_get(stack, b"/api/admin/users", None, probe_id, SPOOFED) == 401
    assert seen(stack, probe_id) == []


# -- revocation feed -----------------------------------------------------------------------------


def wait_refused(port: int, token: str, deadline: float) -> tuple[int, dict[str, str]]:
    while True:
        status, headers, _ = get(port, "/api/orders", token)
        if status != 200 or time.monotonic() > deadline:
            return status, headers
        time.sleep(0.02)


def test_revocation_reaches_the_gateway(stack: GatewayStack) -> None:
    token = stack.token(stack.reader)
    other = stack.token(stack.reader)
    assert get(stack.gateway_port, "/api/orders", token)[0] == 200  # now in the verified cache
    revoke(stack.bastion.port, stack.reader, token)
    status, headers = wait_refused(stack.gateway_port, token, time.monotonic() + REVOCATION_DEADLINE)
    assert status == 401, f"revoked token still accepted {REVOCATION_DEADLINE} s after revocation"
    assert 'error="invalid_token"' in headers["www-authenticate"]
    assert get(stack.gateway_port, "/api/orders", token)[0] == 401  # and stays refused
    assert get(stack.gateway_port, "/api/orders", other)[0] == 200  # other tokens are unaffected


# -- reload under load ---------------------------------------------------------------------------

V2_ROUTE = """
[[gateway.routes]]
prefix = "/v2"
upstream = "app"
scopes = { GET = ["orders:write"] }
"""


def test_reload_under_load_fails_no_request(stack: GatewayStack) -> None:
    writer = stack.token(stack.writer)
    reader = stack.token(stack.reader)
    assert get(stack.gateway_port, "/v2/items", writer)[0] == 404  # no such route yet

    stop = threading.Event()
    statuses: list[int] = []
    errors: list[str] = []

    def hammer(index: int) -> None:
        client = KeepAliveClient(stack.gateway_port)
        try:
            count = 0
            while not stop.is_set():
                count += 1
                if count % 25 == 0:  # fresh connections too, not only kept-alive ones
                    client.close()
                    client = KeepAliveClient(stack.gateway_port)
                status, _, _ = client.get(f"/api/orders?client={index}", writer)
                statuses.append(status)
        except Exception as exc:  # a broken connection is a failed request too
            errors.append(repr(exc))
        finally:
            client.close()

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        while len(statuses) < 40 and not errors:
            time.sleep(0.01)
        stack.rewrite_routes(ROUTES + V2_ROUTE)
        stack.bastion.cli("reload")
        deadline = time.monotonic() + 15
        while get(stack.gateway_port, "/v2/items", writer)[0] != 200:
            assert time.monotonic() < deadline, "the new route never appeared"
            time.sleep(0.05)
        after = len(statuses)
        while len(statuses) < after + 40 and not errors:
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert errors == []
    assert len(statuses) >= 80
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    # The new route carries its own policy.
    assert get(stack.gateway_port, "/v2/items", reader)[0] == 403
    assert get(stack.gateway_port, "/v2/items")[0] == 401
    assert "gateway routes reloaded" in stack.serve_log()


BROKEN_ROUTE = """
[[gateway.routes]]
prefix = "/broken"
upstream = "nowhere"
"""


def test_invalid_config_on_sighup_keeps_the_current_routes(stack: GatewayStack, reader_token: str) -> None:
    before = stack.routes
    stack.rewrite_routes(before + BROKEN_ROUTE)
    try:
        assert stack.bastion.process is not None
        stack.bastion.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload refused, keeping the current routes" not in stack.serve_log():
            assert time.monotonic() < deadline, f"no refusal logged:\n{stack.serve_log()[-2000:]}"
            time.sleep(0.05)
        log = stack.serve_log()
        assert "route '/broken': unknown upstream 'nowhere'" in log
        assert get(stack.gateway_port, "/api/orders", reader_token)[0] == 200
        assert get(stack.gateway_port, "/broken/x", reader_token)[0] == 404
        assert stack.bastion.process.poll() is None
    finally:
        stack.rewrite_routes(before)


# -- key rotation mid-traffic --------------------------------------------------------------------


def rotate_mid_traffic(stack: GatewayStack, publish_delay: str) -> None:
    """Tokens from the authorization server through the gateway, one after another, while a key
    is rotated in; ends once a token signed by the new key has passed, or at the first refusal."""
    first_kid = kid_of(stack.token(stack.reader))
    stop = threading.Event()
    failures: list[str] = []
    kids_passed: set[str] = set()
    requests = [0]

    def traffic() -> None:
        while not stop.is_set():
            token = stack.token(stack.reader)
            status, headers, body = get(stack.gateway_port, "/api/orders", token)
            requests[0] += 1
            if status != 200:
                failures.append(
                    f"{status} kid={kid_of(token)} {headers.get('www-authenticate')} {body[:120]!r}"
                )
                return
            kids_passed.add(kid_of(token))
            if kids_passed - {first_kid}:
                return

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        while requests[0] < 3 and thread.is_alive():
            time.sleep(0.01)
        stack.bastion.cli("keys", "rotate", "--publish-delay", publish_delay)
        # The authorization server reloads its keys every 10 s: the new kid signs within ~11 s.
        thread.join(30)
    finally:
        stop.set()
        thread.join(10)
    assert failures == []
    assert kids_passed - {first_kid}, f"no token with the new kid passed in 30 s ({requests[0]} requests)"
    assert requests[0] > 3


def test_key_rotation_mid_traffic_fails_no_request(tmp_path: Path, stopping: Stopping) -> None:
    # A gateway that may refetch the JWKS every second when a token names an unknown kid.
    stack = GatewayStack(tmp_path / "stack", issuer_options="jwks_refetch_cooldown = 1")
    try:
        rotate_mid_traffic(stack, publish_delay="1")
    finally:
        retire(stack, stopping)


def test_key_rotation_with_default_gateway_settings(tmp_path: Path, stopping: Stopping) -> None:
    stack = GatewayStack(tmp_path / "stack")
    try:
        rotate_mid_traffic(stack, publish_delay="3")
    finally:
        retire(stack, stopping)


# -- several workers -----------------------------------------------------------------------------


def worker_of(stack: GatewayStack, client: KeepAliveClient, workers: set[int]) -> int:
    owner = owner_of_connection(stack.gateway_port, client.local_port, workers)
    assert owner is not None, "no worker holds the connection"
    return owner


def test_two_workers_both_answer_and_both_refuse_a_revoked_token(tmp_path: Path, stopping: Stopping) -> None:
    stack = GatewayStack(tmp_path / "stack", serve_args=("--workers", "2"))
    try:
        assert stack.bastion.process is not None
        workers = child_pids(stack.bastion.process.pid)
        deadline = time.monotonic() + 20
        while len(listening_pids(stack.gateway_port, workers)) < 2:
            died = [pid for pid in workers if _exited(pid)]
            assert not died, f"worker {died} exited:\n{stack.serve_log()[-2000:]}"
            assert time.monotonic() < deadline, f"two workers never listened:\n{stack.serve_log()}"
            time.sleep(0.05)
        workers = listening_pids(stack.gateway_port, workers)
        # One metrics listener for the server, whatever the number of workers: the supervisor
        # holds it and answers with the merge of its workers' metrics.
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{stack.admin_port}/healthz", timeout=5
                ) as response:
                    assert response.status == 200
                    break
            except urllib.error.URLError:
                assert time.monotonic() < deadline, f"admin port {stack.admin_port} never answered"
                time.sleep(0.05)
        supervisor = stack.bastion.process.pid
        assert listening_pids(stack.admin_port, {supervisor, *workers}) == {supervisor}
        token = stack.token(stack.reader)

        def by_worker(expected: int, limit: int = 64) -> dict[int, list[int]]:
            answers: dict[int, list[int]] = {}
            for _ in range(limit):
                client = KeepAliveClient(stack.gateway_port)
                try:
                    status, _, _ = client.get("/api/orders", token)
                    answers.setdefault(worker_of(stack, client, workers), []).append(status)
                finally:
                    client.close()
                if set(answers) == workers and sum(map(len, answers.values())) >= 8:
                    break
            assert set(answers) == workers, f"only {set(answers)} of {workers} answered"
            assert {s for statuses in answers.values() for s in statuses} == {expected}, answers
            return answers

        by_worker(200)
        revoke(stack.bastion.port, stack.reader, token)
        # Every worker follows the revocation feed on its own.
        refused: set[int] = set()
        deadline = time.monotonic() + REVOCATION_DEADLINE
        while refused != workers:
            assert time.monotonic() < deadline, f"workers {workers - refused} still accept a revoked token"
            client = KeepAliveClient(stack.gateway_port)
            try:
                if client.get("/api/orders", token)[0] == 401:
                    refused.add(worker_of(stack, client, workers))
            finally:
                client.close()
        by_worker(401)
    finally:
        retire(stack, stopping)


def _exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


# -- shutdown ------------------------------------------------------------------------------------


def test_sigterm_stops_an_idle_server_promptly(tmp_path: Path, stopping: Stopping) -> None:
    """A regression check: the reloader task once held every graceful stop for 10 s."""
    bastion = Bastion(tmp_path)
    bastion.start()
    try:
        assert bastion.process is not None
        bastion.process.send_signal(signal.SIGTERM)
        try:
            bastion.process.wait(5)  # a liveness bound, far above a normal shutdown
        except subprocess.TimeoutExpired:
            pytest.fail("bastion serve still running 5 s after SIGTERM with no traffic")
        assert bastion.process.returncode == 0
    finally:
        stopping.append(bastion.stop)  # already signalled: stop() waits (and kills past 15 s)
