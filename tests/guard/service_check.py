"""Run inside a fresh virtualenv holding only ``bastion[starlette,flask]``: a service validates
a token with the guard on Starlette and on Flask, and the server's dependencies are absent.

Prints one JSON line for the test that runs it (``test_packaging.py``). Uses nothing but the
installed distribution: keys and tokens come from ``bastion.protocol.jose``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import tempfile
import time
from typing import Any

from bastion.guard import authorize
from bastion.guard import owner
from bastion.guard.flask import Guard
from bastion.guard.starlette import GuardMiddleware
from bastion.protocol import jose
from bastion.storage.fast.sqlite import SQLiteState
from bastion.tokens import FastStateRevocations
from bastion.tokens import StaticKeys
from bastion.tokens import TokenValidator

ISSUER = "https://auth.example"
AUDIENCE = "https://orders.example"


def mint(key: jose.PrivateKey, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "scope": "orders:read",
        "iat": now,
        "exp": now + 60,
    }
    body.update(claims)
    return jose.encode_jwt("ES256", key, {"typ": "at+jwt", "kid": "k1"}, body)


async def asgi_status(app: Any, token: str | None) -> int:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    scope = {"type": "http", "method": "GET", "path": "/", "headers": headers, "query_string": b""}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])


async def endpoint(scope: Any, receive: Any, send: Any) -> None:
    authorize(scope["state"]["principal"], "read", {"id": 1, "owner_id": "alice"}, owner())
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def main() -> None:
    key = jose.generate_private_key("ES256")
    jwks = {"keys": [{**jose.public_jwk(key), "kid": "k1", "use": "sig"}]}
    with tempfile.TemporaryDirectory() as folder:
        revocations = FastStateRevocations(SQLiteState(f"{folder}/state.db"))
        validator = TokenValidator(
            ISSUER, audience=AUDIENCE, key_source=StaticKeys(jwks), revocation=revocations
        )
        app = GuardMiddleware(endpoint, validator=validator)
        starlette = [
            asyncio.run(asgi_status(app, token)) for token in (mint(key), None, mint(key, sub="carol"))
        ]

        flask_app = __import__("flask").Flask("orders")
        guard = Guard(
            flask_app, validator=TokenValidator(ISSUER, audience=AUDIENCE, key_source=StaticKeys(jwks))
        )
        flask_app.get("/")(guard.require_scopes("orders:read")(lambda: "ok"))
        client = flask_app.test_client()
        flask = [
            client.get("/", headers={"Authorization": f"Bearer {mint(key)}"}).status_code,
            client.get("/").status_code,
            client.get("/", headers={"Authorization": f"Bearer {mint(key, scope='other')}"}).status_code,
        ]
        guard.close()
    # click and jinja2 come with Flask itself.
    absent = ["sqlalchemy", "alembic", "argon2", "aiosqlite", "uvicorn", "pydantic", "prometheus_client"]
    print(
        json.dumps(
            {
                "starlette": starlette,
                "flask": flask,
                "installed": [name for name in absent if importlib.util.find_spec(name) is not None],
                "loaded": [name for name in absent if name in sys.modules],
            }
        )
    )


if __name__ == "__main__":
    main()
