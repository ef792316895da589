"""Real issuers for policy tests: signing keys, a JWKS served over loopback, token minting."""

from __future__ import annotations

import time
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from aiohttp import web

from bastion.protocol import jose


@dataclass
class Issuer:
    """An issuer whose JWKS is served by a real aiohttp server on 127.0.0.1."""

    issuer: str
    alg: str = "ES256"
    kid: str = "k1"
    key: jose.PrivateKey = field(init=False)
    runner: web.AppRunner | None = None
    port: int = 0
    fetches: int = 0

    def __post_init__(self) -> None:
        self.key = jose.generate_private_key(self.alg)

    @property
    def jwks_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    async def start(self) -> None:
        async def jwks(request: web.Request) -> web.Response:
            self.fetches += 1
            jwk = {**jose.public_jwk(self.key), "kid": self.kid, "alg": self.alg, "use": "sig"}
            return web.json_response({"keys": [jwk]})

        app = web.Application()
        app.router.add_get("/jwks.json", jwks)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def token(
        self,
        *,
        audience: str = "https://api.example",
        scope: str = "catalog:read",
        subject: str = "alice",
        client_id: str = "shop",
        lifetime: float = 300,
        key: jose.PrivateKey | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        body = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "client_id": client_id,
            "scope": scope,
            "iat": now,
            "exp": now + lifetime,
            "jti": f"jti-{time.monotonic_ns()}",
            **claims,
        }
        header = {"typ": "at+jwt", "kid": self.kid}
        return jose.encode_jwt(self.alg, key or self.key, header, body)
