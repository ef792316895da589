"""Real parts on loopback for the BFF tests: the authorization server (with sign-in), a
recording upstream where the gateway would be, and the BFF app served by uvicorn.

The test plays the browser: it keeps cookies by hand (so every ``Set-Cookie`` is inspected),
follows the BFF's redirect to the authorization server, signs in there with the real forms, and
brings the authorization response back to the BFF's callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import requests
import uvicorn

from bastion.bff.app import create_app
from bastion.ops.audit import AuditEvent
from bastion.ops.audit import AuditLog
from bastion.server.app import create_app as create_server_app
from bastion.server.people import people_routes
from bastion.services.container import Services
from bastion.services.crypto import Sealer
from bastion.services.users import create_user
from bastion.settings import AuthorizationServerSettings
from bastion.settings import BFFSettings
from bastion.storage.open import open_stores
from bastion.storage.protocols import FastState
from bastion.storage.sql.migrate import migrate
from tests.people.flows import PASSWORD
from tests.people.support import CHEAP_PASSWORDS
from tests.people.support import KEK

ORIGIN = "https://shop.example"
REDIRECT_URI = f"{ORIGIN}/bff/callback"
GOODBYE = f"{ORIGIN}/goodbye"
SCOPES = ("openid", "profile", "email", "offline_access", "orders:read")
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
TX_RE = re.compile(r'name="tx" value="([^"]+)"')


def bound() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@dataclass
class AuthServer:
    issuer: str
    client_secret: str
    events: list[AuditEvent]

    def refreshes(self) -> int:
        """Refresh grants the server answered with new tokens."""
        return sum(1 for e in self.events if e.type == "token.refreshed")

    def named(self, name: str) -> list[AuditEvent]:
        return [e for e in self.events if e.type == name]


def _serve_in_thread(
    app: Any, sock: socket.socket, cleanup: Callable[[], Any] | None = None
) -> Callable[[], None]:
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False))
    server.install_signal_handlers = lambda: None  # type: ignore[attr-defined,unused-ignore]

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            if cleanup is not None:
                await cleanup()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(10)
        sock.close()

    return stop


@contextlib.contextmanager
def auth_server(tmp_path: Path) -> Iterator[AuthServer]:
    """The authorization server with sign-in, a confidential client ``bff`` and user ``alice``."""
    sock = bound()
    issuer = f"http://127.0.0.1:{sock.getsockname()[1]}"
    url = f"sqlite:///{tmp_path / 'bastion.db'}"
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    settings = AuthorizationServerSettings(issuer=issuer, allow_insecure_http_issuer=True)
    audit = AuditLog(tmp_path / "audit.log")
    events: list[AuditEvent] = []
    audit.listeners.append(events.append)
    secret: list[str] = []

    async def seed() -> None:
        stores = open_stores(url, state_url)
        await migrate(stores.db)
        services = Services.create(settings, stores, Sealer(KEK), audit)
        _, client_secret = await services.clients.create(
            name="Shop",
            public=False,
            grant_types=["authorization_code", "refresh_token"],
            scopes=list(SCOPES),
            redirect_uris=[REDIRECT_URI],
            post_logout_redirect_uris=[GOODBYE],
            first_party=True,
            client_id="bff",
        )
        assert client_secret is not None
        secret.append(client_secret)
        await create_user(
            services, "alice", PASSWORD, name="Alice", email="alice@example.com", passwords=CHEAP_PASSWORDS
        )
        await stores.close()

    asyncio.run(seed())
    stores = open_stores(url, state_url)
    services = Services.create(settings, stores, Sealer(KEK), audit)
    app = create_server_app(services, extra_routes=people_routes(services, passwords=CHEAP_PASSWORDS))
    stop = _serve_in_thread(app, sock, stores.close)
    try:
        yield AuthServer(issuer=issuer, client_secret=secret[0], events=events)
    finally:
        stop()


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]]

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        entry = {
            "method": self.command,
            "target": self.path,
            "headers": [[k.lower(), v] for k, v in self.headers.raw_items()],
            "body": body.decode("latin-1"),
        }
        self.seen.append(entry)
        out = json.dumps({"ok": True, "target": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("set-cookie", "upstream=1; Path=/")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = _handle

    def log_message(self, *_: Any) -> None:
        pass


@contextlib.contextmanager
def recording_upstream() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP server where the gateway would be, recording every request it receives."""
    seen: list[dict[str, Any]] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Clock:
    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def bff_settings(issuer: str, gateway: str = "http://127.0.0.1:9", **overrides: Any) -> BFFSettings:
    values: dict[str, Any] = {
        "issuer": issuer,
        "client_id": "bff",
        "client_secret_env": "BFF_SECRET",
        "redirect_uri": REDIRECT_URI,
        "gateway_url": gateway,
        "scopes": SCOPES,
        "post_logout_redirect_uri": GOODBYE,
    }
    values.update(overrides)
    return BFFSettings(**values)


@dataclass
class Browser:
    """Plays the browser against the BFF: cookies kept by hand, every response recorded."""

    base: str
    http: aiohttp.ClientSession
    cookies: dict[str, str] = field(default_factory=dict)
    set_cookies: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        headers = dict(kwargs.pop("headers", {}))
        if self.cookies:
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        async with self.http.request(
            method, self.base + path, headers=headers, allow_redirects=False, **kwargs
        ) as r:
            body = await r.read()
            for value in r.headers.getall("set-cookie", []):
                self.set_cookies.append(value)
                name, _, rest = value.partition("=")
                content = rest.split(";")[0]
                if "Max-Age=0" in value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = content
            self.bodies.append(body)
            return r.status, {k.lower(): v for k, v in r.headers.items()}, body

    async def sign_in(self, return_to: str = "/") -> tuple[int, dict[str, str]]:
        """``/bff/login`` → the authorization server's forms → ``/bff/callback``."""
        status, headers, _ = await self.request("GET", f"/bff/login?return_to={return_to}")
        assert status == 303, status
        callback = await asyncio.to_thread(sign_in_at_server, headers["location"])
        parts = urlsplit(callback)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == REDIRECT_URI
        status, headers, _ = await self.request("GET", f"/bff/callback?{parts.query}")
        return status, headers


def _fields(html: str) -> dict[str, str]:
    csrf = CSRF_RE.search(html)
    tx = TX_RE.search(html)
    assert csrf is not None, html
    assert tx is not None, html
    return {"csrf_token": csrf.group(1), "tx": tx.group(1)}


def sign_in_at_server(
    url: str, username: str = "alice", *, password: str = PASSWORD, redirect_uri: str = REDIRECT_URI
) -> str:
    """Submit the authorization server's login (and consent) forms; the redirect to the client."""
    issuer = f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"
    with requests.Session() as browser:
        page = browser.get(url, timeout=10)
        assert page.status_code == 200, page.text
        fields = _fields(page.text)
        response = browser.post(
            f"{issuer}/login",
            data={**fields, "username": username, "password": password},
            allow_redirects=False,
            timeout=10,
        )
        for _ in range(5):
            assert response.status_code in (302, 303), response.text
            location = response.headers["location"]
            if location.startswith(redirect_uri):
                return location
            target = location if location.startswith("http") else issuer + location
            if target.startswith(f"{issuer}/consent"):
                page = browser.get(target, timeout=10)
                fields = _fields(page.text)
                response = browser.post(
                    f"{issuer}/consent",
                    data={**fields, "decision": "allow"},
                    allow_redirects=False,
                    timeout=10,
                )
            else:
                response = browser.get(target, allow_redirects=False, timeout=10)
    raise AssertionError("never reached the client's redirect URI")


@contextlib.asynccontextmanager
async def serve_bff(
    settings: BFFSettings, state: FastState, client_secret: str, clock: Callable[[], float] = time.time
) -> AsyncIterator[tuple[Browser, aiohttp.ClientSession]]:
    """The BFF app on a loopback socket in this event loop; a browser for it."""
    timeout = aiohttp.ClientTimeout(total=10, connect=2)
    async with aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()) as http:
        app = create_app(settings, state=state, http=http, client_secret=client_secret, clock=clock)
        sock = bound()
        server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False))
        server.install_signal_handlers = lambda: None  # type: ignore[attr-defined,unused-ignore]
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            async with aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()) as client:
                yield Browser(f"http://127.0.0.1:{sock.getsockname()[1]}", client), http
        finally:
            server.should_exit = True
            await task
            sock.close()
