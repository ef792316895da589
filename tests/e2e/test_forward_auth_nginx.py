"""Forward-auth behind a real nginx: Debian's package, ``auth_request``, started by the test.

nginx (``daemon off``, one process, every path in ``tmp_path``) protects a recording upstream
with ``auth_request`` against the gateway's forward-auth endpoint, configured as
``docs/gateway.md`` tells operators to. Each request of the matrix
(``tests.conformance.gw_forward``) goes through nginx and through the gateway's own proxy, and
must end the same way: forwarded with the same identity headers, or refused — 401 and 403 with
the same challenge, anything else the gateway refuses as nginx's 500 (``auth_request`` passes on
only 401 and 403) — and never forwarded. Then every path attack of
``test_gw_paths.py`` goes through nginx without a token: nothing that reaches the upstream reads,
in any lenient way, as a protected path.

Without nginx the tests skip, unless ``BASTION_REQUIRE_SERVICES=1`` (CI, whose ``.ci/run``
installs the package), where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bastion.gateway.paths import parse_target
from tests.conformance.gw_attack import Stack
from tests.conformance.gw_attack import stop_stack
from tests.conformance.gw_forward import CLIENT
from tests.conformance.gw_forward import MATRIX
from tests.conformance.gw_forward import Case
from tests.conformance.gw_forward import Outcome
from tests.conformance.gw_forward import challenge
from tests.conformance.gw_forward import client_request
from tests.conformance.gw_forward import forward_auth_stack
from tests.conformance.gw_forward import send
from tests.conformance.gw_forward import through_proxy
from tests.conformance.gw_forward import token_for
from tests.conformance.gw_forward import upstream_identity
from tests.conformance.test_gw_paths import E2E_TARGETS
from tests.conformance.test_gw_paths import PROTECTED
from tests.conformance.test_gw_paths import readings
from tests.conformance.test_gw_paths import under
from tests.e2e.harness import stop_process

pytestmark = pytest.mark.anyio

#: The server block of docs/gateway.md's nginx example, with the test's ports.
SERVER = """
    server {
        listen 127.0.0.1:%(port)d;

        # Every location asks the gateway first; only the internal ask itself does not.
        auth_request /_bastion_auth;
        auth_request_set $bastion_subject $upstream_http_x_bastion_subject;
        auth_request_set $bastion_client $upstream_http_x_bastion_client;
        auth_request_set $bastion_scopes $upstream_http_x_bastion_scopes;
        # nginx passes the challenge on by itself for 401 only; this adds it to 403.
        auth_request_set $bastion_challenge $upstream_http_www_authenticate;
        add_header WWW-Authenticate $bastion_forbidden_challenge always;

        location / {
            proxy_pass http://127.0.0.1:%(upstream)d;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            # Set from the gateway's answer, or (empty) not sent: a client's copy never passes.
            proxy_set_header X-Bastion-Subject $bastion_subject;
            proxy_set_header X-Bastion-Client $bastion_client;
            proxy_set_header X-Bastion-Scopes $bastion_scopes;
        }

        location = /_bastion_auth {
            internal;
            auth_request off;
            proxy_pass http://127.0.0.1:%(gateway)d/_bastion/auth;
            proxy_http_version 1.1;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Method "";
            proxy_set_header X-Forwarded-Uri "";
        }
    }
"""

CONFIG = """
daemon off;
master_process off;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log info;
events { worker_connections 256; }
http {
    access_log %(dir)s/access.log;
    client_body_temp_path %(dir)s/client_body;
    proxy_temp_path %(dir)s/proxy;
    fastcgi_temp_path %(dir)s/fastcgi;
    uwsgi_temp_path %(dir)s/uwsgi;
    scgi_temp_path %(dir)s/scgi;

    map $status $bastion_forbidden_challenge {
        403     $bastion_challenge;
        default "";
    }
%(server)s
}
"""


def nginx_binary() -> str:
    """Debian's nginx with the auth_request module, or skip (fail under CI)."""
    found = shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(path, os.X_OK)), None
    )
    message = ""
    if found is None:
        message = "nginx is missing: install Debian's nginx package (apt-get install nginx)"
    else:
        built = subprocess.run([found, "-V"], capture_output=True, text=True, check=False).stderr
        if "http_auth_request_module" not in built:
            message = f"{found} is built without the auth_request module"
    if message:
        if os.environ.get("BASTION_REQUIRE_SERVICES") == "1":
            pytest.fail(message + " (BASTION_REQUIRE_SERVICES=1; .ci/run installs it)")
        pytest.skip(message)
    assert found is not None
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    port: int
    directory: Path

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


async def start_nginx(binary: str, directory: Path, *, gateway: int, upstream: int) -> Nginx:
    """nginx in front of ``upstream``, asking ``gateway``; listening when this returns."""
    for _ in range(5):  # the free port can be taken between the probe and nginx's bind
        port = _free_port()
        server = SERVER % {"port": port, "upstream": upstream, "gateway": gateway}
        config = directory / "nginx.conf"
        config.write_text(CONFIG % {"dir": directory, "server": server})
        process = subprocess.Popen(
            [binary, "-p", str(directory), "-c", str(config), "-e", str(directory / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        nginx = Nginx(process, port, directory)
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            return nginx
        stop_nginx(nginx)
        if "Address already in use" not in nginx.error_log():
            break
    raise RuntimeError(f"nginx did not start:\n{nginx.error_log()}")


def stop_nginx(nginx: Nginx) -> None:
    stop_process(nginx.process, 5)


@dataclass
class Front:
    stack: Stack
    nginx: Nginx


@pytest.fixture
async def front(tmp_path: Path) -> AsyncIterator[Front]:
    binary = nginx_binary()
    stack = await forward_auth_stack()
    try:
        nginx = await start_nginx(binary, tmp_path, gateway=stack.port, upstream=stack.upstream.port)
        try:
            yield Front(stack, nginx)
        finally:
            stop_nginx(nginx)
    finally:
        await stop_stack(stack)


async def through_nginx(front: Front, case: Case, authorization: bytes | None) -> Outcome:
    stack = front.stack
    since = len(stack.upstream.requests)
    reply = await send(
        front.nginx.port, client_request(case, authorization), method=case.method, local=CLIENT
    )
    identity, target = upstream_identity(stack, since)
    return Outcome(reply, identity, target)


def _differences(case: Case, proxy: Outcome, nginx: Outcome) -> list[str]:
    out = []
    if proxy.reply.status != case.expect:
        out.append(f"proxy answered {proxy.reply.status}, expected {case.expect}")
    if nginx.forwarded != proxy.forwarded:
        out.append(f"forwarded through nginx: {nginx.forwarded}, through the proxy: {proxy.forwarded}")
    elif proxy.forwarded:
        if nginx.reply.status != proxy.reply.status:
            out.append(f"status {nginx.reply.status} through nginx, {proxy.reply.status} through the proxy")
        if nginx.identity != proxy.identity:
            out.append(f"identity {nginx.identity} through nginx, {proxy.identity} through the proxy")
        # nginx forwards the target as the client sent it; it names the resource authorized.
        assert nginx.target is not None
        canonical = parse_target(nginx.target)
        if canonical.with_path(canonical.path) != proxy.target:
            out.append(f"upstream got {nginx.target!r} through nginx, {proxy.target!r} through the proxy")
    elif proxy.reply.status in (401, 403):
        if nginx.reply.status != proxy.reply.status:
            out.append(f"status {nginx.reply.status} through nginx, {proxy.reply.status} through the proxy")
        if challenge(nginx.reply) != challenge(proxy.reply):
            out.append(f"challenge {challenge(nginx.reply)!r}, through the proxy {challenge(proxy.reply)!r}")
    else:
        # auth_request turns every other status of the ask into 500: still a refusal.
        if nginx.reply.status != 500:
            out.append(f"status {nginx.reply.status} through nginx, expected 500")
    return out


async def test_nginx_auth_request_ends_every_request_as_the_proxy_does(front: Front) -> None:
    failures = {}
    for case in MATRIX:
        authorization = token_for(front.stack, case.token)
        nginx = await through_nginx(front, case, authorization)
        proxy = await through_proxy(front.stack, case, authorization)
        problems = _differences(case, proxy, nginx)
        if problems:
            failures[case.name] = problems
    assert not failures, f"{failures}\n{front.nginx.error_log()[-2000:]}"


async def test_identity_reaches_the_upstream_and_spoofed_copies_do_not(front: Front) -> None:
    stack = front.stack
    token = token_for(stack, "catalog:read")
    allowed = await through_nginx(front, Case("read", 200, b"GET", b"/catalog/items"), token)
    assert allowed.reply.status == 200
    assert allowed.identity == {
        b"x-bastion-subject": [b"alice"],
        b"x-bastion-client": [b"shop"],
        b"x-bastion-scopes": [b"catalog:read"],
    }
    spoofed = Case(
        "spoof",
        200,
        b"GET",
        b"/public/x",
        None,
        (b"X-Bastion-Subject: admin", b"x-bastion-scopes: admin", b"X_Bastion_Client: admin"),
    )
    public = await through_nginx(front, spoofed, None)
    assert public.reply.status == 200
    assert public.identity == {b"x-bastion-subject": [], b"x-bastion-client": [], b"x-bastion-scopes": []}
    [seen] = stack.upstream.requests[-1:]
    assert not [name for name in seen.names() if name.replace(b"_", b"-").startswith(b"x-bastion-")]


async def test_path_attacks_through_nginx_never_reach_a_protected_path(front: Front) -> None:
    """Without a token, whatever nginx forwards reads, however leniently, as no protected path."""
    stack = front.stack
    leaks = []
    for target in E2E_TARGETS:
        since = len(stack.upstream.requests)
        data = b"GET " + target + b" HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n"
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await send(front.nginx.port, data, local=CLIENT)
        for seen in stack.upstream.requests[since:]:
            for reading in readings(seen.target):
                if any(under(reading, prefix) for prefix in PROTECTED):
                    leaks.append((target, seen.target, reading))
    assert not leaks
