"""Helpers for the token tests: real HTTP issuers on 127.0.0.1 (aiohttp servers on ephemeral
ports) and a clock moved by hand."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections import Counter
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from bastion.protocol import jose

AUDIENCE = "https://api.example"


class Clock:
    """A clock tests move by hand (no sleeps)."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Issuer:
    """An authorization server's public surface: metadata, JWKS, introspection.

    Counts every request by path, lets tests rotate keys, and signs tokens like the real one.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.hits: Counter[str] = Counter()
        self.keys: dict[str, jose.PrivateKey] = {}
        self.extra_jwks: list[dict[str, Any]] = []
        self.introspection: dict[str, dict[str, Any]] = {}
        self.introspection_auth: list[str | None] = []
        self.server: TestServer | None = None
        self.url = ""
        #: When False, only ``/.well-known/openid-configuration`` answers.
        self.oauth_metadata = True
        #: The ``issuer`` the metadata claims, when not our own URL.
        self.advertised_issuer: str | None = None
        #: When set, JWKS requests wait for it (to hold a fetch in flight).
        self.jwks_gate: asyncio.Event | None = None
        #: Cache-Control of JWKS responses, when set.
        self.jwks_cache_control: str | None = None

    # -- key management -----------------------------------------------------------------------

    def add_key(self, kid: str, alg: str = "ES256") -> jose.PrivateKey:
        key = jose.generate_private_key(alg)
        self.keys[kid] = key
        return key

    def jwks(self) -> dict[str, Any]:
        published = [{**jose.public_jwk(key), "kid": kid, "use": "sig"} for kid, key in self.keys.items()]
        return {"keys": published + self.extra_jwks}

    def mint(
        self,
        kid: str | None = "k1",
        alg: str = "ES256",
        *,
        header: dict[str, Any] | None = None,
        key: jose.PrivateKey | None = None,
        **claims: Any,
    ) -> str:
        now = int(self.clock())
        body: dict[str, Any] = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": "alice",
            "client_id": "shop",
            "scope": "orders:read orders:write",
            "iat": now,
            "exp": now + 900,
            "jti": f"jti-{len(self.hits)}-{now}-{id(claims)}",
        }
        body.update(claims)
        for name in [name for name, value in body.items() if value is None]:
            del body[name]
        head: dict[str, Any] = {"typ": "at+jwt"}
        if kid is not None:
            head["kid"] = kid
        head.update(header or {})
        signer = key if key is not None else self.keys[kid or next(iter(self.keys))]
        return jose.encode_jwt(alg, signer, head, body)

    # -- HTTP ---------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()

        async def metadata(request: web.Request) -> web.Response:
            self.hits[request.path] += 1
            if not self.oauth_metadata and request.path.endswith("oauth-authorization-server"):
                raise web.HTTPNotFound()
            return web.json_response(
                {
                    "issuer": self.advertised_issuer or self.url,
                    "jwks_uri": self.url + "/jwks.json",
                    "introspection_endpoint": self.url + "/introspect",
                }
            )

        async def jwks(request: web.Request) -> web.Response:
            self.hits[request.path] += 1
            if self.jwks_gate is not None:
                await self.jwks_gate.wait()
            headers = {"cache-control": self.jwks_cache_control} if self.jwks_cache_control else None
            return web.json_response(self.jwks(), headers=headers)

        async def introspect(request: web.Request) -> web.Response:
            self.hits[request.path] += 1
            self.introspection_auth.append(request.headers.get("Authorization"))
            expected = "Basic " + base64.b64encode(b"gateway:s3cret").decode()
            if request.headers.get("Authorization") != expected:
                return web.json_response({"error": "invalid_client"}, status=401)
            form = await request.post()
            answer = self.introspection.get(str(form.get("token")), {"active": False})
            return web.json_response(answer)

        app.router.add_get("/.well-known/oauth-authorization-server", metadata)
        app.router.add_get("/.well-known/openid-configuration", metadata)
        app.router.add_get("/jwks.json", jwks)
        app.router.add_post("/introspect", introspect)
        return app

    async def start(self) -> None:
        self.server = TestServer(self.app(), host="127.0.0.1")
        await self.server.start_server()
        self.url = str(self.server.make_url("")).rstrip("/")

    async def stop(self) -> None:
        await close_server(self.server)


async def close_server(server: TestServer | None) -> None:
    """Close an aiohttp test server, at most 10 s: its shutdown waits for every connection, and
    one left half-open by a client cancelled mid-request must not hang the suite's teardown."""
    if server is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.close(), 10)


class Attacker:
    """Another host that serves a JWKS of its own and counts whoever comes to fetch it."""

    def __init__(self) -> None:
        self.hits = 0
        self.key = jose.generate_private_key("ES256")
        self.server: TestServer | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()

        async def anything(request: web.Request) -> web.Response:
            self.hits += 1
            return web.json_response({"keys": [{**jose.public_jwk(self.key), "kid": "evil"}]})

        app.router.add_route("*", "/{tail:.*}", anything)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        self.url = str(self.server.make_url("")).rstrip("/")

    async def stop(self) -> None:
        await close_server(self.server)
