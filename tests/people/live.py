"""A live authorization server with the people routes, on 127.0.0.1 with an ephemeral port,
and a tiny client callback server: real sockets, for the browser test."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import uvicorn

from bastion.ops.audit import AuditLog
from bastion.server.app import create_app
from bastion.server.people import people_routes
from bastion.services.container import Services
from bastion.services.crypto import Sealer
from bastion.services.users import create_role
from bastion.services.users import create_user
from bastion.settings import AuthorizationServerSettings
from bastion.storage.open import open_stores
from bastion.storage.sql.migrate import migrate

from .flows import PASSWORD
from .support import CHEAP_PASSWORDS
from .support import KEK
from .support import web_client


@dataclass
class Live:
    issuer: str
    callback: str
    services: Services


class _Callback(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>Client</title><h1>Client received the response</h1>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


def _bound() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@contextlib.contextmanager
def live_server(tmp_path: Path) -> Iterator[Live]:
    """Serve the authorization server (with a client ``web`` and a user ``alice``) and a client
    callback page, each on its own ephemeral port."""
    callback_server = ThreadingHTTPServer(("127.0.0.1", 0), _Callback)
    callback = f"http://127.0.0.1:{callback_server.server_address[1]}/cb"
    threading.Thread(target=callback_server.serve_forever, daemon=True).start()
    sock = _bound()
    issuer = f"http://127.0.0.1:{sock.getsockname()[1]}"
    url = f"sqlite:///{tmp_path / 'bastion.db'}"
    state_url = f"sqlite:///{tmp_path / 'state.db'}"  # the embedded default, as `bastion serve`
    settings = AuthorizationServerSettings(issuer=issuer)
    audit = AuditLog(tmp_path / "audit.log")

    async def seed() -> None:
        stores = open_stores(url, state_url)
        await migrate(stores.db)
        services = Services.create(settings, stores, Sealer(KEK), audit)
        await web_client(services, redirect_uris=[callback], first_party=False)
        await create_role(services, "reader", ["orders:read"])
        await create_user(
            services,
            "alice",
            PASSWORD,
            roles=["reader"],
            name="Alice",
            email="alice@example.com",
            passwords=CHEAP_PASSWORDS,
        )
        await stores.close()

    asyncio.run(seed())
    stores = open_stores(url, state_url)
    services = Services.create(settings, stores, Sealer(KEK), audit)
    app = create_app(services, extra_routes=people_routes(services, passwords=CHEAP_PASSWORDS))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            await stores.close()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        threading.Event().wait(0.01)
    try:
        yield Live(issuer=issuer, callback=callback, services=services)
    finally:
        server.should_exit = True
        thread.join(10)
        callback_server.shutdown()
        callback_server.server_close()
        sock.close()
