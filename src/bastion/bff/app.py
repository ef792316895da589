"""The BFF's ASGI app: sign-in, session, CSRF, and the API proxy to the gateway.

Routes (all under ``/bff``):

- ``GET /login?return_to=/path``: authorization code + PKCE (RFC 7636, S256), with ``state``
  and ``nonce``; all three are bound to a short-lived pre-login cookie.
- ``GET /callback``: completes the sign-in; mints a new session id (session fixation).
- ``GET /me``: the user's ID-token claims and the session's CSRF token; never a token.
- ``POST /logout``: revokes the refresh token (RFC 7009), deletes the session, and answers the
  URL of the authorization server's RP-initiated logout.
- ``/api/{path}``: forwarded to the gateway with the session's access token.

Unsafe methods need an allowed ``Origin`` (:class:`OriginMiddleware`) and the session's
``X-CSRF-Token``. No CORS headers are ever sent, so foreign origins cannot read responses.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode
from urllib.parse import urlsplit

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.routing import Mount
from starlette.routing import Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp
from starlette.types import Message
from starlette.types import Receive
from starlette.types import Scope
from starlette.types import Send

from bastion.bff import cookies
from bastion.bff.cookies import CookiePolicy
from bastion.bff.metrics import BffMetrics
from bastion.bff.oidc import AuthorizationServer
from bastion.bff.oidc import GrantRefused
from bastion.bff.oidc import UpstreamError
from bastion.bff.oidc import id_token_claims
from bastion.bff.redirects import safe_return_path
from bastion.bff.refresh import Refresher
from bastion.bff.refresh import RefreshTimeout
from bastion.bff.sessions import PreLogin
from bastion.bff.sessions import Session
from bastion.bff.sessions import SessionStore
from bastion.bff.sessions import Tokens
from bastion.bff.sessions import new_id
from bastion.settings import BFFSettings
from bastion.storage.protocols import FastState
from bastion.storage.protocols import StorageError

log = logging.getLogger("bastion.bff")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Never forwarded to the gateway: hop-by-hop headers (RFC 9110 §7.6.1), the browser's cookies
#: and CSRF token, and any credential the browser tried to send itself.
_REQUEST_DROP = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
        "host", "content-length", "cookie", "authorization", "proxy-authorization", "x-csrf-token",
    }
)  # fmt: skip
_RESPONSE_DROP = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
        "content-length", "content-encoding", "set-cookie",
    }
)  # fmt: skip
MAX_BODY = 1024 * 1024
MAX_UPSTREAM_BODY = 16 * 1024 * 1024


def problem(status: int, title: str, detail: str = "", headers: dict[str, str] | None = None) -> Response:
    """An RFC 9457 problem document."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    return JSONResponse(
        body,
        status,
        media_type="application/problem+json",
        headers={"cache-control": "no-store", **(headers or {})},
    )


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    """The session store failed (Redis down, the state file unreadable): 503, never a 500."""
    log.error("bff: %s %s: session store: %s", request.method, request.url.path, exc)
    return problem(
        503, "Service Unavailable", "the session store is unavailable; retry later", {"retry-after": "5"}
    )


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


#: The single-page app's own files: scripts, styles, images and API calls from this origin only;
#: no inline script, no framing (clickjacking), no referrer leaving the page.
PAGE_HEADERS = (
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-cache"),
)


class PageHeadersMiddleware:
    """Adds :data:`PAGE_HEADERS` to every response of the static pages. Pure ASGI."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *((k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"),
                    *PAGE_HEADERS,
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


class OriginMiddleware:
    """Unsafe methods must come from an allowed ``Origin`` (a CSRF defence in depth beside the
    token: a cross-site form or ``fetch`` carries its own origin, and a request without any
    ``Origin`` is refused too). Pure ASGI."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            origin = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"origin"), None)
            if origin is None or origin not in self.allowed:
                await problem(403, "Forbidden", "this origin may not send that request")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def s256(verifier: str) -> str:
    """RFC 7636 §4.2: ``BASE64URL-ENCODE(SHA256(ASCII(code_verifier)))``."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class BFF:
    """The endpoints, over injected settings, store, HTTP session and clock."""

    def __init__(
        self,
        settings: BFFSettings,
        *,
        state: FastState,
        http: aiohttp.ClientSession,
        client_secret: str,
        clock: Callable[[], float] = time.time,
        metrics: BffMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else BffMetrics()
        self.http = http
        self.clock = clock
        self.cookies = CookiePolicy.for_origin(settings.redirect_uri)
        self.store = SessionStore(
            state,
            idle=settings.idle_timeout,
            absolute=settings.absolute_timeout,
            login_ttl=settings.login_timeout,
            clock=clock,
        )
        self.server = AuthorizationServer(http, settings.issuer, settings.client_id, client_secret)
        self.refresher = Refresher(
            state, self.store, self.server, clock=clock, margin=settings.refresh_margin, metrics=self.metrics
        )

    # -- helpers ---------------------------------------------------------------------------

    def _cookie(self, request: Request, name: str) -> str | None:
        return self.cookies.read(request.headers.get("cookie", ""), name)

    async def _session(self, request: Request) -> tuple[str, Session] | None:
        sid = self._cookie(request, cookies.SESSION)
        if sid is None:
            return None
        session = await self.store.touch(sid)
        return (sid, session) if session is not None else None

    def _signed_out(self) -> Response:
        response = problem(401, "Unauthorized", "no session: sign in at /bff/login")
        response.headers.append("set-cookie", self.cookies.header(cookies.SESSION, "", 0))
        return response

    @staticmethod
    def _csrf_ok(request: Request, session: Session) -> bool:
        sent = request.headers.get("x-csrf-token", "")
        return hmac.compare_digest(sent.encode(), session.csrf.encode())

    # -- sign-in ---------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        return_to = safe_return_path(request.query_params.get("return_to", "/"))
        if return_to is None:
            return problem(400, "Bad Request", "return_to must be a relative path on this site")
        pre = PreLogin(
            state=new_id(), nonce=new_id(), verifier=secrets.token_urlsafe(48), return_to=return_to
        )
        try:
            endpoint = await self.server.endpoint("authorization_endpoint")
        except UpstreamError as exc:
            log.error("bff: %s", exc)
            return problem(502, "Bad Gateway", "the authorization server is unavailable")
        cookie = await self.store.begin(pre)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.settings.client_id,
                "redirect_uri": self.settings.redirect_uri,
                "scope": " ".join(self.settings.scopes),
                "state": pre.state,
                "nonce": pre.nonce,
                "code_challenge": s256(pre.verifier),
                "code_challenge_method": "S256",
            }
        )
        response = Response(
            status_code=303, headers={"location": f"{endpoint}?{query}", "cache-control": "no-store"}
        )
        response.headers.append(
            "set-cookie", self.cookies.header(cookies.LOGIN, cookie, self.settings.login_timeout)
        )
        return response

    async def callback(self, request: Request) -> Response:
        login_cookie = self._cookie(request, cookies.LOGIN)
        pre = await self.store.take_login(login_cookie) if login_cookie else None
        if pre is None:
            self.metrics.signin("no_login")
            return problem(400, "Bad Request", "no sign-in in progress in this browser (or it expired)")
        response = await self._complete(request, pre)
        if response.status_code >= 400:
            # The pre-login record is consumed either way: the cookie is of no further use.
            response.headers.append("set-cookie", self.cookies.header(cookies.LOGIN, "", 0))
        return response

    async def _complete(self, request: Request, pre: PreLogin) -> Response:
        params = request.query_params
        # RFC 6749 §10.12: the state binds the response to this browser's request.
        if not hmac.compare_digest(params.get("state", "").encode(), pre.state.encode()):
            self.metrics.signin("mismatch")
            return problem(400, "Bad Request", "the sign-in response does not belong to this browser")
        # RFC 9207 §2.4: if ``iss`` is present it must be the issuer the request went to.
        if "iss" in params and params["iss"] != self.server.issuer:
            self.metrics.signin("mismatch")
            return problem(400, "Bad Request", "the sign-in response names another issuer")
        if "error" in params or "code" not in params:
            self.metrics.signin("error")
            return problem(400, "Bad Request", f"sign-in did not complete: {params.get('error', 'no code')}")
        try:
            response = await self.server.token(
                {
                    "grant_type": "authorization_code",
                    "code": params["code"],
                    "redirect_uri": self.settings.redirect_uri,
                    "code_verifier": pre.verifier,
                }
            )
            if response.id_token is None:
                raise UpstreamError("no ID token (is openid among the scopes?)")
            now = self.clock()
            claims = id_token_claims(
                response.id_token,
                issuer=self.server.issuer,
                client_id=self.settings.client_id,
                nonce=pre.nonce,
                now=now,
            )
            userinfo = await self.server.userinfo(response.access_token)
            # OpenID Connect Core §5.3.2: "The sub Claim in the UserInfo Response MUST be verified
            # to exactly match the sub Claim in the ID Token; if they do not match, the UserInfo
            # Response values MUST NOT be used."
            if userinfo.get("sub") == claims.get("sub"):
                claims = {**userinfo, **claims}
        except GrantRefused as exc:
            self.metrics.signin("refused")
            return problem(400, "Bad Request", f"sign-in failed: {exc.error}")
        except UpstreamError as exc:
            log.error("bff: sign-in: %s", exc)
            self.metrics.signin("upstream_error")
            return problem(502, "Bad Gateway", "the sign-in could not be completed")
        # Session fixation: whatever session this browser had ends; the signed-in one is new.
        if (old := self._cookie(request, cookies.SESSION)) is not None:
            await self.store.delete(old)
        session = Session(claims=claims, csrf=new_id(), created_at=now, last_seen=now)
        tokens = Tokens(
            access_token=response.access_token,
            refresh_token=response.refresh_token,
            expires_at=now + response.expires_in,
            id_token=response.id_token,
        )
        sid = await self.store.create(session, tokens)
        self.metrics.signin("ok")
        redirect = Response(status_code=303, headers={"location": pre.return_to, "cache-control": "no-store"})
        redirect.headers.append(
            "set-cookie", self.cookies.header(cookies.SESSION, sid, self.settings.absolute_timeout)
        )
        redirect.headers.append("set-cookie", self.cookies.header(cookies.LOGIN, "", 0))
        return redirect

    # -- session ---------------------------------------------------------------------------

    async def me(self, request: Request) -> Response:
        found = await self._session(request)
        if found is None:
            return self._signed_out()
        _, session = found
        return JSONResponse(
            {"claims": session.claims, "csrf_token": session.csrf}, headers={"cache-control": "no-store"}
        )

    async def logout(self, request: Request) -> Response:
        found = await self._session(request)
        if found is None:
            return self._signed_out()
        sid, session = found
        if not self._csrf_ok(request, session):
            return problem(403, "Forbidden", "missing or wrong X-CSRF-Token")
        tokens = await self.store.load_tokens(sid)
        await self.store.delete(sid)
        self.metrics.logouts += 1
        if tokens is not None and tokens.refresh_token is not None:
            try:
                await self.server.revoke(tokens.refresh_token, "refresh_token")
            except UpstreamError as exc:
                log.warning("bff: logout could not revoke the refresh token: %s", exc)
        query = {"client_id": self.settings.client_id}
        if self.settings.post_logout_redirect_uri:
            query["post_logout_redirect_uri"] = self.settings.post_logout_redirect_uri
        try:
            end = await self.server.endpoint("end_session_endpoint")
            body: dict[str, Any] = {"logout_url": f"{end}?{urlencode(query)}"}
        except UpstreamError:
            body = {"logout_url": None}
        response = JSONResponse(body, headers={"cache-control": "no-store"})
        response.headers.append("set-cookie", self.cookies.header(cookies.SESSION, "", 0))
        return response

    # -- API proxy -------------------------------------------------------------------------

    def _anonymous(self, request: Request) -> bool:
        """Whether ``request`` is a safe call to one of ``anonymous_paths`` (sent without a token)."""
        if request.method not in ("GET", "HEAD"):
            return False
        path = request.path_params["path"]
        if any(segment in (".", "..") for segment in path.split("/")):
            return False
        return any(
            path.startswith(allowed) if allowed.endswith("/") else path == allowed
            for allowed in self.settings.anonymous_paths
        )

    async def api(self, request: Request) -> Response:
        response = await self._api(request)
        self.metrics.api(response.status_code)
        return response

    async def _api(self, request: Request) -> Response:
        found = await self._session(request)
        if found is None:
            if self._anonymous(request):
                return await self._forward(request, None)
            return self._signed_out()
        sid, session = found
        if request.method not in SAFE_METHODS and not self._csrf_ok(request, session):
            return problem(403, "Forbidden", "missing or wrong X-CSRF-Token")
        try:
            tokens = await self.refresher.tokens(sid, session)
        except RefreshTimeout:
            self.metrics.refresh("timeout")
            return problem(
                503,
                "Service Unavailable",
                "the session's token refresh is taking too long",
                {"retry-after": "1"},
            )
        except UpstreamError as exc:
            log.error("bff: refresh: %s", exc)
            self.metrics.refresh("upstream_error")
            return problem(502, "Bad Gateway", "the authorization server is unavailable")
        if tokens is None:
            await self.store.delete(sid)
            return self._signed_out()
        return await self._forward(request, tokens.access_token)

    async def _forward(self, request: Request, access_token: str | None) -> Response:
        """Send ``request`` to the gateway, with ``access_token`` as its only credential."""
        body = await request.body()
        if len(body) > MAX_BODY:
            return problem(413, "Content Too Large")
        path = request.path_params["path"]
        url = f"{self.settings.gateway_url.rstrip('/')}/{path}"
        if request.url.query:
            url += "?" + request.url.query
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _REQUEST_DROP}
        if access_token is not None:
            headers["authorization"] = f"Bearer {access_token}"
        try:
            async with self.http.request(
                request.method, url, headers=headers, data=body or None, allow_redirects=False
            ) as upstream:
                content = await upstream.content.read(MAX_UPSTREAM_BODY + 1)
                if len(content) > MAX_UPSTREAM_BODY:
                    return problem(502, "Bad Gateway", "the API's answer is too large")
                out = Response(content, upstream.status)
                for key, value in upstream.headers.items():
                    if key.lower() not in _RESPONSE_DROP:
                        out.headers.append(key, value)
                return out
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.error("bff: gateway %s: %s", url, type(exc).__name__)
            return problem(502, "Bad Gateway", "the API gateway is unavailable")


def create_app(
    settings: BFFSettings,
    *,
    state: FastState,
    http: aiohttp.ClientSession,
    client_secret: str,
    clock: Callable[[], float] = time.time,
    metrics: BffMetrics | None = None,
) -> ASGIApp:
    """The BFF app, with everything it needs injected.

    Args:
        settings: the ``[bff]`` section.
        state: the fast-state store the sessions live in (shared by every BFF process).
        http: the one aiohttp session for the authorization server and the gateway (its
            timeouts apply to every call).
        client_secret: the BFF's client secret (read by the CLI from the environment or a file).
        clock: seconds since the epoch (injected by tests).
        metrics: where the BFF counts (registered by the caller); private counters by default.
    """
    bff = BFF(settings, state=state, http=http, client_secret=client_secret, clock=clock, metrics=metrics)
    if not bff.cookies.secure:
        log.warning(
            "bff: %s is plain http on loopback: cookies lose the __Host- prefix and Secure (a demo only)",
            settings.redirect_uri,
        )
    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    routes: list[BaseRoute] = [
        Route("/bff/login", bff.login, methods=["GET"]),
        Route("/bff/callback", bff.callback, methods=["GET"]),
        Route("/bff/me", bff.me, methods=["GET"]),
        Route("/bff/logout", bff.logout, methods=["POST"]),
        Route("/bff/api/{path:path}", bff.api, methods=methods),
    ]
    if settings.static_dir is not None:
        pages = StaticFiles(directory=settings.static_dir, html=True)
        routes.append(Mount("/", app=PageHeadersMiddleware(pages)))
    app = Starlette(
        routes=routes,
        exception_handlers={StorageError: _store_unavailable},
    )
    allowed = frozenset({origin_of(settings.redirect_uri), *settings.allowed_origins})
    return OriginMiddleware(app, allowed)
