"""``bastion demo``: the whole chain on this machine, as an e-commerce shop.

One command starts the authorization server, the gateway and the BFF (``bastion serve`` with a
generated configuration) and, in a second process, the shop's four services
(:mod:`bastion.demo`), each validating tokens itself with :mod:`bastion.guard`. Every port is
checked before anything starts; the data (database, state, keys, client secrets, the demo
logins) lives in the data directory and is reused by the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import secrets
import shlex
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

import click

from bastion.cli.common import asgi_server
from bastion.cli.common import run
from bastion.cli.context import open_services
from bastion.cli.listen import listen_socket
from bastion.cli.listen import probe
from bastion.protocol.models import Client
from bastion.protocol.models import TokenFormat
from bastion.services import users as people
from bastion.services.container import Services
from bastion.settings import Settings

#: The ``aud`` of every token meant for the shop's API (the gateway and each service check it).
AUDIENCE = "https://shop.demo/api"
BFF_SCOPES = ("openid", "profile", "email", "offline_access", "orders:read", "orders:write", "catalog:write")
ROLES = {
    "customer": ("orders:read", "orders:write"),
    "admin": ("orders:read", "orders:write", "catalog:write"),
}
#: username → (role, display name)
USERS = {
    "alice": ("customer", "Alice Martin"),
    "carol": ("customer", "Carol Diaz"),
    "bob": ("admin", "Bob Admin"),
}
SERVICES = ("catalog", "orders", "inventory", "payments")


@dataclass(frozen=True)
class DemoPorts:
    """The loopback ports of the demo's parts, all derived from one base."""

    base: int = 8000

    @property
    def server(self) -> int:
        return self.base

    @property
    def admin(self) -> int:
        return self.base + 1

    @property
    def gateway(self) -> int:
        return self.base + 80

    @property
    def shop(self) -> int:
        return self.base + 300

    @property
    def metrics(self) -> int:
        return self.base + 1100

    def service(self, name: str) -> int:
        """``catalog`` 8401, ``orders`` 8402, ``inventory`` 8403, ``payments`` 8404 (from 8000)."""
        return self.base + 401 + SERVICES.index(name)


@dataclass(frozen=True)
class ClientSpec:
    """A client the demo registers (and re-registers when its definition changed)."""

    client_id: str
    name: str
    grant_types: tuple[str, ...]
    scopes: tuple[str, ...] = ()
    public: bool = False
    redirect_uris: tuple[str, ...] = ()
    post_logout_redirect_uris: tuple[str, ...] = ()
    token_format: TokenFormat = TokenFormat.JWT

    def matches(self, client: Client) -> bool:
        return (
            client.public == self.public
            and set(client.grant_types) == set(self.grant_types)
            and set(client.scopes) == set(self.scopes)
            and tuple(client.redirect_uris) == self.redirect_uris
            and tuple(client.post_logout_redirect_uris) == self.post_logout_redirect_uris
            and client.token_format == self.token_format
            and client.audience == AUDIENCE
        )


def client_specs(ports: DemoPorts) -> tuple[ClientSpec, ...]:
    """Every client of the demo."""
    shop = f"http://127.0.0.1:{ports.shop}"
    code = ("authorization_code", "refresh_token")
    machine = ("client_credentials",)
    return (
        ClientSpec(
            "shop-bff", "Bastion Shop", code, BFF_SCOPES,
            redirect_uris=(f"{shop}/bff/callback",), post_logout_redirect_uris=(f"{shop}/",),
        ),
        ClientSpec(
            "shop-mobile", "Bastion Shop for phones", code,
            ("openid", "profile", "offline_access", "orders:read", "orders:write"), public=True,
            redirect_uris=("http://127.0.0.1:8765/callback",),
        ),
        ClientSpec("inventory-sync", "Inventory sync job", machine, ("inventory:read", "inventory:write")),
        ClientSpec(
            "partner-opaque", "Partner integration", machine, ("inventory:read",),
            token_format=TokenFormat.OPAQUE,
        ),
        ClientSpec("orders-service", "Orders service", machine, ("inventory:reserve", "payments:write")),
        ClientSpec("shop-gateway", "Gateway (introspection)", machine),
        ClientSpec("shop-services", "Shop services (introspection)", machine),
    )  # fmt: skip


@dataclass(frozen=True)
class Demo:
    """Where the demo keeps its data and how its parts are wired."""

    data_dir: Path
    ports: DemoPorts

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.ports.server}"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway}/api"

    @property
    def shop(self) -> str:
        """The shop's origin (the BFF's)."""
        return f"http://127.0.0.1:{self.ports.shop}"

    def secret_file(self, client_id: str) -> Path:
        return self.data_dir / "secrets" / client_id

    def secret(self, client_id: str) -> str:
        return self.secret_file(client_id).read_text().strip()

    @property
    def logins_file(self) -> Path:
        return self.data_dir / "logins.json"

    def logins(self) -> dict[str, str]:
        """username → password (made on the first run, kept by later ones)."""
        with contextlib.suppress(OSError, ValueError):
            found = json.loads(self.logins_file.read_text())
            if isinstance(found, dict):
                return {str(k): str(v) for k, v in found.items()}
        return {}

    def settings(self) -> Settings:
        """The ``bastion serve`` configuration: authorization server, gateway and BFF."""
        ports = self.ports
        upstreams = {name: {"targets": [f"127.0.0.1:{ports.service(name)}"]} for name in SERVICES}
        guarded = {"forward_authorization": True}
        routes = [
            {"prefix": "/api/catalog", "upstream": "catalog", "auth": "none", "strip_prefix": True,
             "methods": ["GET", "HEAD"]},
            {"prefix": "/api/admin/catalog", "upstream": "catalog", "rewrite_prefix": "/admin",
             "scopes": {"PUT": ["catalog:write"]}, **guarded},
            {"prefix": "/api/orders", "upstream": "orders", "rewrite_prefix": "/orders",
             "scopes": {"GET": ["orders:read"], "POST": ["orders:write"]}, **guarded,
             "rate_limit": {"limits": [{"requests": 60, "per": 60, "burst": 20, "key": "subject"}]}},
            {"prefix": "/api/inventory", "upstream": "inventory", "strip_prefix": True,
             "scopes": {"GET": ["inventory:read"], "PUT": ["inventory:write"], "POST": ["inventory:reserve"],
                        "DELETE": ["inventory:reserve"]}, **guarded},
            {"prefix": "/api/payments", "upstream": "payments", "strip_prefix": True,
             "scopes": {"POST": ["payments:write"]}, **guarded},
        ]  # fmt: skip
        return Settings.model_validate(
            {
                "data_dir": self.data_dir,
                "authorization_server": {
                    "listen": f"127.0.0.1:{ports.server}",
                    "admin_listen": f"127.0.0.1:{ports.admin}",
                    "issuer": self.issuer,
                },
                "gateway": {
                    "listen": f"127.0.0.1:{ports.gateway}",
                    "admin_listen": f"127.0.0.1:{ports.metrics}",
                    "access_log": str(self.data_dir / "access.log"),
                    "issuers": [
                        {
                            "issuer": self.issuer,
                            "audience": AUDIENCE,
                            "introspection": {
                                "client_id": "shop-gateway",
                                "client_secret_file": str(self.secret_file("shop-gateway")),
                            },
                        }
                    ],
                    "upstreams": upstreams,
                    "routes": routes,
                },
                "bff": {
                    "listen": f"127.0.0.1:{ports.shop}",
                    "issuer": self.issuer,
                    "client_id": "shop-bff",
                    "client_secret_file": str(self.secret_file("shop-bff")),
                    "redirect_uri": f"{self.shop}/bff/callback",
                    "post_logout_redirect_uri": f"{self.shop}/",
                    "gateway_url": self.api,
                    "scopes": list(BFF_SCOPES),
                    "anonymous_paths": ["catalog/"],
                    "static_dir": str(Path(__file__).resolve().parent.parent / "demo" / "shop"),
                },
            }
        )


async def _register(services: Services, demo: Demo) -> None:
    """Create (or bring up to date) the demo's clients, roles and users."""
    for spec in client_specs(demo.ports):
        existing = await services.clients.get(spec.client_id)
        if existing is not None and not spec.matches(existing):
            await services.clients.delete(spec.client_id)
            existing = None
        secret: str | None = None
        if existing is None:
            _, secret = await services.clients.create(
                name=spec.name,
                public=spec.public,
                grant_types=spec.grant_types,
                scopes=spec.scopes,
                redirect_uris=spec.redirect_uris,
                post_logout_redirect_uris=spec.post_logout_redirect_uris,
                audience=AUDIENCE,
                token_format=spec.token_format,
                client_id=spec.client_id,
            )
        elif not spec.public and not demo.secret_file(spec.client_id).exists():
            _, secret = await services.clients.rotate_secret(spec.client_id)
        if secret is not None:
            path = demo.secret_file(spec.client_id)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.write_text(secret + "\n")
            path.chmod(0o600)
    stores = people.people(services)
    for name, scopes in ROLES.items():
        if not await stores.roles.get_roles([name]):
            await people.create_role(services, name, scopes)
    logins = demo.logins()
    for username, (role_name, display) in USERS.items():
        password = logins.get(username)
        if await stores.users.get_user_by_username(username) is None:
            password = password or secrets.token_urlsafe(9)
            await people.create_user(
                services, username, password, roles=[role_name], email=f"{username}@shop.demo", name=display
            )
        elif password is None:
            password = secrets.token_urlsafe(9)
            await people.set_password(services, username, password)
        logins[username] = password
    demo.logins_file.write_text(json.dumps(logins, indent=2) + "\n")
    demo.logins_file.chmod(0o600)


async def prepare(demo: Demo) -> None:
    """Migrate, create the signing keys, and register everything the shop needs."""
    async with open_services(demo.settings()) as services:
        await services.keys.load()
        await services.keys.ensure()
        await _register(services, demo)


# -- the shop's services, in their own process ---------------------------------------------


async def _serve_shop(demo: Demo, listeners: dict[str, socket.socket]) -> None:
    from bastion.demo.orders import Downstream
    from bastion.storage.open import open_state
    from bastion.tokens import FastStateRevocations
    from bastion.tokens import Introspector
    from bastion.tokens import IssuerVerifier
    from bastion.tokens import TokenValidator

    settings = demo.settings()
    state = open_state(settings.resolved_state_url())
    revocations = FastStateRevocations(state)
    data = demo.data_dir / "shop"
    verifiers: list[IssuerVerifier] = []

    def verifier(opaque: bool = False) -> IssuerVerifier:
        # Each service has its own verifier, as separate deployments would; the partner's
        # opaque tokens are introspected by the inventory service.
        validator = TokenValidator(demo.issuer, audience=AUDIENCE, revocation=revocations)
        introspector = (
            Introspector(
                demo.issuer,
                client_id="shop-services",
                client_secret=demo.secret("shop-services"),
                audience=AUDIENCE,
            )
            if opaque
            else None
        )
        verifiers.append(IssuerVerifier(validator, introspector))
        return verifiers[-1]

    from bastion.demo import catalog
    from bastion.demo import inventory
    from bastion.demo import orders
    from bastion.demo import payments

    downstream = Downstream(
        gateway_url=demo.api,
        token_url=f"{demo.issuer}/token",
        userinfo_url=f"{demo.issuer}/userinfo",
        client_id="orders-service",
        client_secret=demo.secret("orders-service"),
    )
    apps = {
        "catalog": catalog.create_app(data, verifier()),
        "orders": orders.create_app(data, verifier(), downstream),
        "inventory": inventory.create_app(data, verifier(opaque=True)),
        "payments": payments.create_app(data, verifier()),
    }
    servers = {name: asgi_server(app, lifespan=True) for name, app in apps.items()}
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()

    async def orphaned() -> None:
        # Stop with the command that started us, even if it could not tell us.
        while os.getppid() == parent:  # noqa: ASYNC110 - no event tells of a parent's death
            await asyncio.sleep(1.0)
        stop.set()

    tasks = [loop.create_task(server.serve(sockets=[listeners[name]])) for name, server in servers.items()]
    watcher = loop.create_task(orphaned())
    # Revocations reach every service at once, not when a cached token expires.
    follower = loop.create_task(revocations.follow(verifiers))
    await stop.wait()
    watcher.cancel()
    follower.cancel()
    for server in servers.values():
        server.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    for item in verifiers:
        await item.close()
    await state.close()


def shop_process(demo: Demo, listeners: dict[str, socket.socket]) -> None:
    """Entry point of the services' process."""
    import logging

    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_shop(demo, listeners))


# -- the command -----------------------------------------------------------------------------


def bind_services(demo: Demo) -> dict[str, socket.socket]:
    """Check every port of the demo and bind the services' own.

    Raises:
        ListenError: a port is in use (the message names it).
    """
    ports = demo.ports
    for port, what in ((ports.server, "authorization server"), (ports.admin, "admin API"), (ports.gateway, "gateway"),
                       (ports.shop, "shop (BFF)"), (ports.metrics, "metrics")):  # fmt: skip
        probe(f"127.0.0.1:{port}", f"the demo's {what}")
    listeners: dict[str, socket.socket] = {}
    try:
        for name in SERVICES:
            listeners[name] = listen_socket(f"127.0.0.1:{ports.service(name)}", f"the demo's {name} service")
    except BaseException:
        for sock in listeners.values():
            sock.close()
        raise
    return listeners


def _token_command(demo: Demo, client_id: str, scope: str) -> str:
    auth = shlex.quote(f"{client_id}:{demo.secret(client_id)}")
    return (
        f"curl -s -u {auth} -d grant_type=client_credentials -d scope={shlex.quote(scope)} {demo.issuer}/token \\\n"
        "          | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'"
    )


def welcome(demo: Demo) -> str:
    """What the terminal shows: the shop's URL, the logins, and commands for machine clients."""
    logins = demo.logins()
    ports = demo.ports
    width = max(len(name) for name in USERS)
    people_lines = "\n".join(
        f"  {name:<{width}}  {logins.get(name, '?'):<14} {role}{' (edits products, sees every order)' if role == 'admin' else ''}"
        for name, (role, _) in USERS.items()
    )
    services = "  ".join(f"{name} :{ports.service(name)}" for name in SERVICES)
    api = demo.api
    return f"""
Bastion demo: a shop behind the whole chain (data in {demo.data_dir}/)

  Shop                  {demo.shop}/   <- open this in a browser
  Authorization server  {demo.issuer}   (sign-in, consent, tokens)
  Admin API             http://127.0.0.1:{ports.admin}   (bastion:admin tokens only; docs/admin-api.md)
  Gateway               {api}   (every API call passes it)
  Services              {services}   (each checks the token itself)
  Metrics (Prometheus)  http://127.0.0.1:{ports.metrics}/metrics

Sign in to the shop as:
{people_lines}

Machine clients, without a browser:

  # No token: the gateway refuses (401 with an RFC 6750 challenge)
  curl -si -w '\\n' {api}/orders

  # The inventory-sync job (client credentials, a JWT) sets the stock of mugs
  TOKEN=$({_token_command(demo, "inventory-sync", "inventory:write")})
  curl -s -w '\\n' -X PUT -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
       -d '{{"quantity": 40}}' {api}/inventory/stock/mug

  # ... but may not charge a payment (403 insufficient_scope, from the gateway)
  curl -si -w '\\n' -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d '{{}}' {api}/payments/charges

  # The partner integration gets an opaque token; the gateway and the inventory service introspect it
  PARTNER=$({_token_command(demo, "partner-opaque", "inventory:read")})
  curl -s -w '\\n' -H "Authorization: Bearer $PARTNER" {api}/inventory/stock

  # Revoke it (RFC 7009): the revocation feed reaches the gateway within a moment, then it refuses
  curl -s -w '\\n' -u {shlex.quote("partner-opaque:" + demo.secret("partner-opaque"))} -d "token=$PARTNER" {demo.issuer}/revoke
  sleep 1
  curl -si -w '\\n' -H "Authorization: Bearer $PARTNER" {api}/inventory/stock

The mobile app (public client shop-mobile, PKCE) signs in at {demo.issuer}/authorize with
redirect_uri http://127.0.0.1:8765/callback; see docs/demo.md.
Ctrl-C stops everything; the next `bastion demo` reuses the data (`--reset` starts afresh).
"""


def run_demo(data_dir: Path, *, base_port: int = 8000, reset: bool = False) -> None:
    """Prepare the data, start the shop's services and serve the chain until Ctrl-C."""
    import shutil

    from bastion.cli.serve import serve

    demo = Demo(data_dir=data_dir, ports=DemoPorts(base_port))
    listeners = bind_services(demo)
    try:
        if reset and data_dir.exists():
            shutil.rmtree(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        click.echo(f"Preparing the demo in {data_dir}/ (database, signing keys, clients, users)…", err=True)
        run(prepare(demo))
        click.echo(welcome(demo))
        process = multiprocessing.get_context("spawn").Process(
            target=shop_process, args=(demo, listeners), name="bastion-demo-shop"
        )
        process.start()
    finally:
        for sock in listeners.values():
            sock.close()
    try:
        serve(demo.settings(), workers=1, migrate=True)
    finally:
        if process.is_alive():
            process.terminate()
        process.join(15)
        if process.is_alive():
            process.kill()
