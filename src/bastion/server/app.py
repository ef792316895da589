"""The authorization server's ASGI application.

The machine endpoints (``/token``, ``/introspect``, ``/revoke``) are dispatched before the
router (see :mod:`bastion.server.endpoints`); everything else is a Starlette app: metadata,
JWKS, health, and the interactive routes of sign-in.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.routing import Route

from bastion.protocol import rfc8414
from bastion.server import endpoints
from bastion.services.container import Services
from bastion.types import Receive
from bastion.types import Scope
from bastion.types import Send


def metadata_document(services: Services) -> dict[str, object]:
    """The RFC 8414 document (extended by sign-in routes when present)."""
    settings = services.settings
    return rfc8414.metadata(
        settings.issuer,
        grant_types=["client_credentials", *services.grant_handlers],
        extra=services.metadata_extra,
    )


def _routes(services: Services) -> list[BaseRoute]:
    max_age = services.settings.jwks_max_age

    async def jwks(_: Request) -> Response:
        return JSONResponse(
            services.keys.jwks(),
            headers={"cache-control": f"public, max-age={max_age}", "x-content-type-options": "nosniff"},
        )

    async def oauth_metadata(_: Request) -> Response:
        return JSONResponse(metadata_document(services), headers={"cache-control": "public, max-age=300"})

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"}, headers={"cache-control": "no-store"})

    return [
        Route("/jwks.json", jwks, methods=["GET"]),
        Route("/.well-known/oauth-authorization-server", oauth_metadata, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
    ]


class AuthorizationServer:
    """ASGI entry point: a fast dispatch for machine endpoints in front of Starlette."""

    def __init__(self, services: Services, extra_routes: list[BaseRoute] | None = None) -> None:
        self.services = services
        self._fast = {
            "/token": endpoints.FormEndpoint(services, endpoints.token, "token"),
            "/introspect": endpoints.FormEndpoint(services, endpoints.introspect, "introspect"),
            "/revoke": endpoints.FormEndpoint(services, endpoints.revoke, "revoke"),
        }

        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            await services.start()
            try:
                yield
            finally:
                await services.close()

        self.app = Starlette(routes=[*_routes(services), *(extra_routes or [])], lifespan=lifespan)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self._fast.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(services: Services, extra_routes: list[BaseRoute] | None = None) -> AuthorizationServer:
    """The authorization server app over assembled services."""
    return AuthorizationServer(services, extra_routes)
