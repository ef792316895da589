"""The people-facing routes of the authorization server: authorize, login, consent, logout,
UserInfo and OpenID Connect discovery.

Thin by design: parse, call :mod:`bastion.services.authorize` (and friends), render. Every HTML
page is server-rendered (Jinja2, no script) and sent with a strict CSP, ``X-Frame-Options: DENY``,
``Referrer-Policy: no-referrer``, ``X-Content-Type-Options: nosniff`` and ``Cache-Control:
no-store``. Form posts carry the session's CSRF token, compared in constant time.

``form-action`` lists the client's redirect origin on the login and consent pages only: Chrome
applies ``form-action`` to the redirects that follow a form submission, and the last hop of a
successful sign-in is the redirect to the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.responses import RedirectResponse
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.routing import Mount
from starlette.routing import Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from bastion.net import TrustedProxies
from bastion.net import parse_networks
from bastion.ops.audit_events import current_request
from bastion.protocol.errors import InsufficientScope
from bastion.protocol.errors import InvalidRequest
from bastion.protocol.errors import InvalidToken
from bastion.protocol.errors import OAuthError
from bastion.protocol.errors import SlowDown
from bastion.protocol.oidc.discovery import authorization_metadata
from bastion.protocol.oidc.discovery import openid_configuration
from bastion.protocol.oidc.logout import logout_redirect
from bastion.protocol.oidc.logout import parse_end_session
from bastion.protocol.oidc.logout import verify_id_token_hint
from bastion.protocol.oidc.userinfo import userinfo_claims
from bastion.protocol.rfc6749.authorize import Interaction
from bastion.protocol.rfc6749.scope import parse_scope
from bastion.server.app import metadata_document
from bastion.server.endpoints import introspect_token
from bastion.services import authorize as flow
from bastion.services.authorization_code import exchange_code
from bastion.services.container import Services
from bastion.services.login import LoginFailed
from bastion.services.login import LoginThrottle
from bastion.services.login import ThrottlePolicy
from bastion.services.login import authenticate
from bastion.services.refresh import introspect_refresh_token
from bastion.services.refresh import purge as purge_refresh_tokens
from bastion.services.refresh import refresh
from bastion.services.refresh import revoke_refresh_token
from bastion.services.sessions import purge as purge_login_sessions
from bastion.services.users import Passwords
from bastion.services.users import people

HERE = Path(__file__).parent
DEFAULT_TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
_MAX_FORM_FIELD = 4096
#: UserInfo answers carry personal data: RFC 6749 §5.1's ``no-store`` and, for HTTP/1.0 caches,
#: ``Pragma: no-cache`` (RFC 6750 §5.3 asks the same of responses carrying tokens).
_NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}


def install_people(services: Services) -> None:
    """Register the sign-in grants, refresh-token introspection and revocation, and the
    authorization-endpoint metadata on ``services`` (idempotent)."""
    services.grant_handlers["authorization_code"] = exchange_code
    services.grant_handlers["refresh_token"] = refresh
    tokens = services.tokens

    async def revoker(token: str, client: Any, now: float) -> bool:
        return await revoke_refresh_token(services, token, client, now)

    async def introspector(token: str, client: Any, now: float) -> dict[str, Any] | None:
        return await introspect_refresh_token(services, token, client, now)

    if not any(getattr(r, "__qualname__", "").startswith("install_people") for r in tokens.revokers):
        tokens.revokers.append(revoker)
        tokens.introspectors.append(introspector)
    issuer = services.settings.issuer
    extra = authorization_metadata(issuer)
    extra.pop("grant_types_supported")  # the RFC 8414 builder lists the installed grants itself
    extra.update(
        {
            "userinfo_endpoint": f"{issuer}/userinfo",
            "end_session_endpoint": f"{issuer}/logout",
        }
    )
    services.metadata_extra.update(extra)

    async def purge_people(now: float) -> int:
        """Dead refresh tokens and families, and expired entries of the login-session index."""
        return await purge_refresh_tokens(services, now) + await purge_login_sessions(services, now)

    if not any(getattr(p, "__qualname__", "").startswith("install_people") for p in services.purgers):
        services.purgers.append(purge_people)


def _origin(uri: str) -> str:
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}"


def _csp(form_targets: tuple[str, ...] = ()) -> str:
    form_action = " ".join(["'self'", *dict.fromkeys(form_targets)])
    return (
        "default-src 'none'; style-src 'self'; img-src 'self'; "
        f"form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    )


def _secure(response: Response, form_targets: tuple[str, ...] = ()) -> Response:
    response.headers["content-security-policy"] = _csp(form_targets)
    response.headers["x-frame-options"] = "DENY"
    response.headers["referrer-policy"] = "no-referrer"
    response.headers["x-content-type-options"] = "nosniff"
    response.headers["cache-control"] = "no-store"
    response.headers["pragma"] = "no-cache"
    return response


class PeopleApp:
    """The routes' shared state: services, templates, password hasher and throttle."""

    def __init__(
        self,
        services: Services,
        templates_dir: str | Path | None = None,
        *,
        passwords: Passwords | None = None,
        throttle: ThrottlePolicy | None = None,
    ) -> None:
        self.services = services
        directories = [Path(templates_dir)] if templates_dir else []
        self.templates = Jinja2Templates(directory=[*directories, DEFAULT_TEMPLATES])
        self.passwords = passwords or Passwords()
        settings = services.settings
        self.throttle = LoginThrottle(
            services.stores.state,
            throttle or ThrottlePolicy(**settings.login_throttle.model_dump()),
            metrics=services.metrics,
        )
        self.proxies = TrustedProxies(parse_networks(settings.trusted_proxies))
        secure = services.settings.secure_cookies
        # RFC 6265bis §4.1.3.2: "__Host-" cookies must be Secure, Path=/ and have no Domain.
        self.cookie_name = "__Host-bastion_session" if secure else "bastion_session"
        self.secure = secure

    # -- helpers -----------------------------------------------------------------------------

    def page(
        self,
        request: Request,
        name: str,
        context: dict[str, Any],
        *,
        status: int = 200,
        form_targets: tuple[str, ...] = (),
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        response = self.templates.TemplateResponse(
            request, name, context, status_code=status, headers=headers
        )
        return _secure(response, form_targets)

    def error_page(self, request: Request, error: OAuthError, status: int | None = None) -> Response:
        headers = {"retry-after": str(error.retry_after)} if isinstance(error, SlowDown) else None
        code = status or (error.status_hint if error.status_hint < 500 else 400)
        if code == 401:
            # RFC 9110 §15.5.2: a 401 "MUST send a WWW-Authenticate header field", and a page has
            # no scheme to offer (an unknown client at /authorize is a bad request here).
            code = 400
        return self.page(
            request,
            "error.html",
            {"error": error.error, "description": error.description or "The request could not be completed."},
            status=code,
            headers=headers,
        )

    def set_cookie(self, response: Response, value: str, max_age: int) -> None:
        response.set_cookie(
            self.cookie_name,
            value,
            max_age=max_age,
            path="/",
            secure=self.secure,
            httponly=True,
            samesite="lax",
        )

    async def session(self, request: Request) -> flow.LoginSession | None:
        return await flow.load_session(self.services, request.cookies.get(self.cookie_name))

    async def outcome(self, request: Request, outcome: flow.Outcome, *, status: int = 302) -> Response:
        if isinstance(outcome, flow.ShowError):
            return self.error_page(request, outcome.error)
        if isinstance(outcome, flow.Redirect):
            return _secure(RedirectResponse(outcome.location, status_code=status))
        path = "/login" if outcome.kind is Interaction.LOGIN else "/consent"
        return _secure(RedirectResponse(f"{path}?tx={outcome.pending_id}", status_code=status))

    async def form(self, request: Request) -> dict[str, str]:
        form = await request.form(max_files=0, max_fields=20)
        fields: dict[str, str] = {}
        for name, value in form.multi_items():
            if not isinstance(value, str) or len(value) > _MAX_FORM_FIELD or name in fields:
                raise InvalidRequest("malformed form")
            fields[name] = value
        return fields

    # -- authorization endpoint --------------------------------------------------------------

    async def authorize(self, request: Request) -> Response:
        """RFC 6749 §3.1: GET, and POST as OIDC Core §3.1.2.1 requires."""
        if request.method == "POST":
            items = list((await request.form(max_files=0, max_fields=50)).multi_items())
            pairs = [(k, v) for k, v in items if isinstance(v, str)]
        else:
            pairs = list(request.query_params.multi_items())
        session = await self.session(request)
        cookie = None
        if session is None:
            cookie, session = await flow.new_session(self.services)
        response = await self.outcome(request, await flow.authorize(self.services, pairs, session))
        if cookie is not None:
            self.set_cookie(response, cookie, flow.ANONYMOUS_SESSION_TTL)
        return response

    async def resume(self, request: Request) -> Response:
        session = await self.session(request)
        pending = await flow.load_pending(self.services, request.query_params.get("tx"), session)
        if pending is None or session is None:
            return self.error_page(request, _expired())
        return await self.outcome(request, await flow.resume(self.services, pending, session))

    # -- login ---------------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        session = await self.session(request)
        pending = await flow.load_pending(self.services, request.query_params.get("tx"), session)
        if pending is None or session is None:
            return self.error_page(request, _expired())
        return await self._render_login(request, session, pending)

    async def _render_login(
        self,
        request: Request,
        session: flow.LoginSession,
        pending: flow.Pending,
        *,
        error: str | None = None,
        username: str | None = None,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        client = await self.services.clients.get(pending.request.client_id)
        context = {
            "client_name": client.name if client else pending.request.client_id,
            "csrf_token": session.csrf,
            "tx": pending.pending_id,
            "error": error,
            "username": username if username is not None else pending.request.login_hint or "",
        }
        targets = (_origin(pending.request.redirect_uri),)
        return self.page(request, "login.html", context, status=status, form_targets=targets, headers=headers)

    async def _submitted(
        self, request: Request
    ) -> tuple[dict[str, str], flow.LoginSession, flow.Pending] | Response:
        """A login or consent form post: its fields, the browser session whose CSRF token it
        carries, and the authorization request it continues — or the error page to answer."""
        try:
            fields = await self.form(request)
        except InvalidRequest as exc:
            return self.error_page(request, exc)
        session = await self.session(request)
        if session is None or not flow.csrf_matches(session, fields.get("csrf_token")):
            return self.error_page(
                request, InvalidRequest("the form expired; start again from the application")
            )
        pending = await flow.load_pending(self.services, fields.get("tx"), session)
        if pending is None:
            return self.error_page(request, _expired())
        return fields, session, pending

    async def login(self, request: Request) -> Response:
        submitted = await self._submitted(request)
        if isinstance(submitted, Response):
            return submitted
        fields, session, pending = submitted
        username = fields.get("username", "").strip()
        scope = current_request()
        if scope is not None:  # the client the user signs in for, on every event of this request
            scope.client = pending.request.client_id
        peer = request.client.host if request.client else "unknown"
        ip = self.proxies.client_ip(
            peer, [v.encode("latin-1") for v in request.headers.getlist("x-forwarded-for")]
        )
        try:
            user = await authenticate(
                self.services,
                self.passwords,
                self.throttle,
                username=username,
                password=fields.get("password", ""),
                ip=ip,
            )
        except SlowDown as exc:
            self.services.metrics.signin("throttled")
            return await self._render_login(
                request,
                session,
                pending,
                error=exc.description,
                username=username,
                status=429,
                headers={"retry-after": str(exc.retry_after)},
            )
        except LoginFailed as exc:
            # 400, not 401: a 401 must carry a WWW-Authenticate challenge (RFC 9110 §15.5.2),
            # and a form is not an HTTP authentication scheme.
            self.services.metrics.signin("failed")
            return await self._render_login(
                request, session, pending, error=str(exc), username=username, status=400
            )
        self.services.metrics.signin("ok")
        cookie, signed_in = await flow.sign_in(self.services, session, user, self.services.clock())
        await flow.signed_in_for(self.services, pending, signed_in)
        response = _secure(RedirectResponse(f"/authorize/resume?tx={pending.pending_id}", status_code=303))
        self.set_cookie(response, cookie, self.services.settings.login_session_ttl)
        return response

    # -- consent ---------------------------------------------------------------------------------

    async def consent_page(self, request: Request) -> Response:
        session = await self.session(request)
        pending = await flow.load_pending(self.services, request.query_params.get("tx"), session)
        if pending is None or session is None:
            return self.error_page(request, _expired())
        view = await flow.consent_view(self.services, pending, session)
        if view is None:
            return self.error_page(request, _expired())
        context = {**view, "csrf_token": session.csrf, "tx": pending.pending_id}
        return self.page(
            request, "consent.html", context, form_targets=(_origin(pending.request.redirect_uri),)
        )

    async def consent(self, request: Request) -> Response:
        submitted = await self._submitted(request)
        if isinstance(submitted, Response):
            return submitted
        fields, session, pending = submitted
        decision = fields.get("decision")
        if decision not in ("allow", "deny"):
            return self.error_page(request, _expired())
        outcome = await flow.answer_consent(self.services, pending, session, allow=decision == "allow")
        return await self.outcome(request, outcome, status=303)

    # -- logout (OpenID Connect RP-Initiated Logout 1.0) ---------------------------------------

    async def logout(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                params = await self.form(request)
            except InvalidRequest as exc:
                return self.error_page(request, exc)
        else:
            params = {k: v for k, v in request.query_params.items() if len(v) <= _MAX_FORM_FIELD}
        end = parse_end_session(params)
        services = self.services
        hint_client_id = None
        try:
            if end.id_token_hint:
                keys = {}
                for key in services.keys.published():
                    if (found := services.keys.public_key(key.kid)) is not None:
                        keys[key.kid] = found[1]
                claims = verify_id_token_hint(
                    end.id_token_hint,
                    issuer=services.settings.issuer,
                    keys=keys,
                    algorithms=(services.settings.id_token_algorithm,),
                )
                hint_client_id = str(claims["aud"])
            client_id = end.client_id or hint_client_id
            client = await services.clients.get(client_id) if client_id else None
            target = logout_redirect(end, client, hint_client_id)
        except OAuthError as exc:
            return self.error_page(request, exc)
        session = await self.session(request)
        # RP-Initiated Logout §2: "OPs MUST support the use of the HTTP GET and POST methods".
        # A relying party's POST is a request like a GET; only our own confirmation form, which
        # carries the session's CSRF token, ends a signed-in session.
        confirmed = request.method == "POST" and "csrf_token" in params
        if session is not None and session.signed_in and not confirmed:
            # RP-Initiated Logout §2: the OP SHOULD ask the End-User whether to log out.
            context = {
                "done": False,
                "client_name": client.name if client else None,
                "csrf_token": session.csrf,
                "params": [(k, v) for k, v in params.items() if k != "csrf_token"],
            }
            return self.page(
                request, "logout.html", context, form_targets=(_origin(target),) if target else ()
            )
        if confirmed and not flow.csrf_matches(session, params.get("csrf_token")):
            return self.error_page(request, InvalidRequest("the form expired; sign out again"))
        # Only this browser's own session ends: an ID token alone (which the client holds) must
        # not be enough to sign the user out elsewhere.
        await flow.sign_out(services, session)
        if session is not None and session.user_id:
            services.audit.emit(
                "logout.succeeded",
                actor=session.user_id,
                subject=session.user_id,
                client=client.client_id if client else None,
            )
        response = (
            _secure(RedirectResponse(target, status_code=303))
            if target
            else self.page(request, "logout.html", {"done": True})
        )
        response.delete_cookie(self.cookie_name, path="/", secure=self.secure, httponly=True, samesite="lax")
        return response

    # -- UserInfo (OIDC Core §5.3) -----------------------------------------------------------

    async def userinfo(self, request: Request) -> Response:
        try:
            token = _bearer(request.headers.get("authorization"))
            result = await introspect_token(self.services, token)
            if not result.get("active") or result.get("token_type") == "refresh_token":
                raise InvalidToken("the access token is invalid or expired")
            user = await people(self.services).users.get_user(str(result.get("sub")))
            if user is None or user.disabled:
                raise InvalidToken("the access token is invalid or expired")
            claims = userinfo_claims(user, parse_scope(str(result.get("scope") or "")) or [])
        except OAuthError as exc:
            status = 403 if isinstance(exc, InsufficientScope) else 401
            challenge = f'Bearer realm="{self.services.settings.issuer}", error="{exc.error}"'
            if isinstance(exc, InvalidRequest):
                challenge = f'Bearer realm="{self.services.settings.issuer}"'
            return JSONResponse(
                exc.to_dict(),
                status_code=status,
                headers={"www-authenticate": challenge, **_NO_STORE},
            )
        return JSONResponse(claims, headers={**_NO_STORE, "x-content-type-options": "nosniff"})

    async def discovery(self, _: Request) -> Response:
        settings = self.services.settings
        document = openid_configuration(
            settings.issuer,
            metadata_document(self.services),
            id_token_algorithms=[settings.id_token_algorithm],
        )
        return JSONResponse(document, headers={"cache-control": "public, max-age=300"})


def _expired() -> OAuthError:
    return InvalidRequest(
        "this sign-in request has expired or belongs to another browser; start again from the application"
    )


def _bearer(header: str | None) -> str:
    """The token of an RFC 6750 §2.1 ``Authorization: Bearer`` header.

    Raises:
        InvalidRequest: no Bearer credentials (RFC 6750 §3.1: no error code is sent then).
    """
    if not header:
        raise InvalidRequest("Bearer authentication is required")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or len(token) > 8192:
        raise InvalidRequest("Bearer authentication is required")
    return token.strip()


def people_routes(
    services: Services,
    templates_dir: str | Path | None = None,
    *,
    passwords: Passwords | None = None,
    throttle: ThrottlePolicy | None = None,
) -> list[BaseRoute]:
    """The people-facing routes, to mount in the authorization server app.

    Args:
        services: the assembled services (:func:`install_people` is applied to them).
        templates_dir: a directory whose templates override the defaults file by file.
        passwords: the argon2id hasher (default parameters unless given).
        throttle: login throttling limits.
    """
    install_people(services)
    app = PeopleApp(services, templates_dir, passwords=passwords, throttle=throttle)
    return [
        Route("/authorize", app.authorize, methods=["GET", "POST"]),
        Route("/authorize/resume", app.resume, methods=["GET"]),
        Route("/login", app.login_page, methods=["GET"]),
        Route("/login", app.login, methods=["POST"]),
        Route("/consent", app.consent_page, methods=["GET"]),
        Route("/consent", app.consent, methods=["POST"]),
        Route("/logout", app.logout, methods=["GET", "POST"]),
        Route("/userinfo", app.userinfo, methods=["GET", "POST"]),
        Route("/.well-known/openid-configuration", app.discovery, methods=["GET"]),
        Mount("/static/people", app=StaticFiles(directory=STATIC), name="people-static"),
    ]
