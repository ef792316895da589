"""The authorization server's ASGI application.

The machine endpoints (``/token``, ``/introspect``, ``/revoke``, ``/revocations``) are dispatched before the
router (see :mod:`bastion.server.endpoints`); everything else is a Starlette app: metadata,
JWKS, health, and the interactive routes of sign-in. In front of both, CORS for browser-based
clients on the endpoints they call (:mod:`bastion.server.cors`).

``/openapi.json`` is the OpenAPI document of the machine endpoints and metadata
(:mod:`bastion.server.openapi`), describing only what this app serves.

``/healthz`` is liveness: it answers while the process runs and touches nothing. ``/readyz`` is
readiness: it checks the database and the fast-state store and answers 503 naming the one that
is down. A store that fails while a request is served is a 503 with ``Retry-After`` in the
form of the endpoint: an HTML page for a browser, RFC 6749 error JSON otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.responses import JSONResponse
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.routing import Route

from bastion.net import TrustedProxies
from bastion.net import parse_networks
from bastion.protocol import rfc8414
from bastion.server import endpoints
from bastion.server.audit_scope import AuditScopeMiddleware
from bastion.server.cors import BrowserOrigins
from bastion.server.cors import CorsMiddleware
from bastion.server.cors import client_endpoints
from bastion.server.openapi import openapi_document
from bastion.server.responses import StatusRecorder
from bastion.services.container import Services
from bastion.services.metrics import OTHER
from bastion.storage.protocols import StorageError
from bastion.types import Receive
from bastion.types import Scope
from bastion.types import Send

log = logging.getLogger("bastion.server")

#: Seconds a client should wait before retrying after a 503 (RFC 9110 §10.2.3).
RETRY_AFTER = "5"

_UNAVAILABLE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Temporarily unavailable</title></head>
<body><h1>Temporarily unavailable</h1>
<p role="alert">The sign-in service cannot reach its storage right now. Please try again in a moment.</p>
<p>Error code: <code>temporarily_unavailable</code>.</p></body></html>
"""


def metadata_document(services: Services) -> dict[str, object]:
    """The RFC 8414 document (extended by sign-in routes when present)."""
    settings = services.settings
    return rfc8414.metadata(
        settings.issuer,
        grant_types=["client_credentials", *services.grant_handlers],
        # Bastion's own (RFC 8414 §2 allows additional metadata): the revocation list polled
        # by bastion.tokens.PollingRevocations.
        extra={"revocation_list_endpoint": f"{settings.issuer}/revocations", **services.metadata_extra},
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

    async def ready(_: Request) -> Response:
        checks = await services.stores.check()
        down = {name: problem for name, problem in checks.items() if problem is not None}
        body = {
            "status": "unavailable" if down else "ok",
            "checks": {name: ("down" if name in down else "ok") for name in checks},
        }
        if down:
            log.error("not ready: %s", "; ".join(f"{name}: {problem}" for name, problem in down.items()))
            return JSONResponse(body, 503, headers={"cache-control": "no-store", "retry-after": RETRY_AFTER})
        return JSONResponse(body, headers={"cache-control": "no-store"})

    return [
        Route("/jwks.json", jwks, methods=["GET"]),
        Route("/.well-known/oauth-authorization-server", oauth_metadata, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
        Route("/readyz", ready, methods=["GET"]),
    ]


async def storage_unavailable(request: Request, exc: Exception) -> Response:
    """A store failed mid-request: 503 with ``Retry-After``, never a 500.

    A browser (``Accept: text/html``) gets a page; anything else gets the RFC 6749 error JSON
    ``temporarily_unavailable`` (§4.1.2.1: "unable to handle the request due to a temporary
    overloading or maintenance"). Nothing is cached.
    """
    log.error("%s %s: storage failure: %s", request.method, request.url.path, exc)
    headers = {
        "cache-control": "no-store",
        "retry-after": RETRY_AFTER,
        "x-content-type-options": "nosniff",
        "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    }
    if "text/html" in request.headers.get("accept", ""):
        return HTMLResponse(_UNAVAILABLE_PAGE, 503, headers=headers)
    body = {"error": "temporarily_unavailable", "error_description": "storage is unavailable; retry later"}
    return JSONResponse(body, 503, headers=headers)


class AuthorizationServer:
    """ASGI entry point: a fast dispatch for machine endpoints in front of Starlette."""

    def __init__(self, services: Services, extra_routes: list[BaseRoute] | None = None) -> None:
        self.services = services
        self._fast = {
            "/token": endpoints.FormEndpoint(services, endpoints.token, "token"),
            "/introspect": endpoints.FormEndpoint(services, endpoints.introspect, "introspect"),
            "/revoke": endpoints.FormEndpoint(services, endpoints.revoke, "revoke"),
            "/revocations": endpoints.FormEndpoint(services, endpoints.revocations, "revocations"),
        }

        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            await services.start()
            try:
                yield
            finally:
                await services.close()

        routes = [*_routes(services), *(extra_routes or [])]
        document = openapi_document(
            issuer=services.settings.issuer,
            grant_types=["client_credentials", *services.grant_handlers],
            paths=[*self._fast, *(str(getattr(route, "path", "")) for route in routes)],
        )

        async def openapi(_: Request) -> Response:
            return JSONResponse(document, headers={"cache-control": "public, max-age=300"})

        self.app = Starlette(
            routes=[*routes, Route("/openapi.json", openapi, methods=["GET"])],
            lifespan=lifespan,
            exception_handlers={StorageError: storage_unavailable},
        )
        # CORS for browser-based clients on the endpoints they call (see bastion.server.cors).
        self.browser_origins = BrowserOrigins(
            services.clients, ttl=services.settings.client_cache_ttl, clock=services.clock
        )
        services.clients.on_changed.append(self.browser_origins.invalidate)
        served = [*self._fast, *(str(getattr(route, "path", "")) for route in self.app.routes)]
        cors = CorsMiddleware(self._dispatch, client_endpoints(served), self.browser_origins)
        proxies = TrustedProxies(parse_networks(services.settings.trusted_proxies))
        self._entry = AuditScopeMiddleware(cors, proxies)
        #: The endpoint labels of the request metrics: every routed path, ``other`` for the rest.
        self._endpoints = frozenset(path for path in served if path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._entry(scope, receive, send)
            return
        started = time.perf_counter()
        sending = StatusRecorder(send)
        try:
            await self._entry(scope, receive, sending)
        finally:
            path = scope["path"]
            self.services.metrics.request(
                path if path in self._endpoints else OTHER,
                sending.status or 500,
                time.perf_counter() - started,
            )

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self._fast.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(services: Services, extra_routes: list[BaseRoute] | None = None) -> AuthorizationServer:
    """The authorization server app over assembled services."""
    return AuthorizationServer(services, extra_routes)
