"""The policy chain: small checks run in order for each request on a route.

Each route gets an ordered tuple of :class:`Policy` objects, built from its settings by
:data:`PolicyFactory` callables (:func:`default_factories` gives the built-in ones). A policy's
:meth:`~Policy.check` looks at the :class:`Exchange` and returns

* ``None`` — pass, go on with the next policy;
* a :class:`~bastion.gateway.contract.Reply` — stop and answer (401, 403, 429 …);
* an awaitable of either — the slow path (a JWKS fetch, an introspection call, a Redis round
  trip). :func:`run_chain` stays synchronous until a policy actually needs to wait, so a request
  whose token is in the verified-token cache is decided without creating a coroutine.

Built-in policies, in chain order:

=======================  ==================================================================
``CorsPolicy``           the route's ``cors``: the CORS response headers for the request's
                         ``Origin``, on whatever answers it (never refuses;
                         :mod:`~bastion.gateway.cors`)
``IpPolicy``             the gateway's and the route's ``ip_allow``/``ip_deny`` on the client
                         address resolved through ``trusted_proxies``: 403
``RateLimitPolicy``      the route's rate limits keyed by address, route or header
                         (:mod:`~bastion.gateway.ratelimit`): 429, counting every request
                         that reaches it, preflights and refused forms included
``PreflightPolicy``      the route's ``cors``: a CORS preflight answered here, 204 or 403,
                         before the method filter and any token work; never forwarded
``ContentFilterPolicy``  the route's ``methods`` (405 with ``Allow``), ``max_header_bytes``
                         (431), ``max_body`` (413 for a declared length; the engine cuts a
                         streamed body at it) and ``content_types`` (415), before any token
                         work: they look only at the request's form
``QueryTokenPolicy``     refuses ``access_token`` in the query (OAuth 2.1 §5.2: bearer
                         tokens go in the ``Authorization`` header only): 401, or 400
                         beside an ``Authorization`` header (two credentials)
``BearerAuthPolicy``     exactly one ``Authorization: Bearer`` header; token validated
                         against the route's issuers and audience (RFC 6750 §2.1, RFC 9068)
``ScopePolicy``          every scope the route requires for the method (RFC 6750 §3.1);
                         ``HEAD`` as ``GET``; a method the table does not cover → 405
``RateLimitPolicy``      the route's rate limits keyed by client or subject: 429
``ClaimHeadersPolicy``   the route's ``claim_headers``: chosen claims of the verified token
                         as headers for the upstream (never refuses)
=======================  ==================================================================

Like every policy, later ones see the resolved client address and, after ``BearerAuthPolicy``,
the principal. Bans are checked before the chain, for every request
(:mod:`bastion.gateway.autoban`); their set is an :class:`AddressCheck` too.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Final
from typing import Protocol
from urllib.parse import unquote_to_bytes

import orjson

from bastion.gateway.contract import Headers
from bastion.gateway.contract import Reply
from bastion.gateway.contract import RequestHead
from bastion.gateway.cors import CorsPolicy
from bastion.gateway.cors import CorsRules
from bastion.gateway.cors import PreflightPolicy
from bastion.gateway.headers import ScannedHeaders
from bastion.gateway.headers import claim_value
from bastion.gateway.limits import header_block_bytes
from bastion.gateway.observe import GatewayMetrics
from bastion.gateway.paths import RequestTarget
from bastion.gateway.settings import GatewaySettings
from bastion.gateway.settings import Networks
from bastion.gateway.settings import RouteSettings
from bastion.net import AddressKey
from bastion.net import NetworkSet
from bastion.net import address_key
from bastion.protocol.jose import JOSEError
from bastion.protocol.jose import b64url_decode
from bastion.tokens import InsufficientScope
from bastion.tokens import MalformedToken
from bastion.tokens import Principal
from bastion.tokens import TokenError
from bastion.tokens import TokenTooLarge
from bastion.tokens import bearer_challenge

if TYPE_CHECKING:
    from bastion.ratelimit import Limiter

__all__ = [
    "AddressCheck",
    "BearerAuthPolicy",
    "ClaimHeadersPolicy",
    "ContentFilterPolicy",
    "Exchange",
    "IpPolicy",
    "IpRules",
    "Policy",
    "PolicyContext",
    "PolicyFactory",
    "PolicyResult",
    "QueryTokenPolicy",
    "ScopePolicy",
    "TokenVerifier",
    "default_factories",
    "problem",
    "run_chain",
]

PolicyResult = Reply | None

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN: Final = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")
_MAX_TOKEN: Final = 16 * 1024
_ONE_CREDENTIAL: Final = "Send exactly one credential, in one Authorization header"
_HEADER_ONLY: Final = "Send the access token in the Authorization header"


class TokenVerifier(Protocol):
    """What the gateway needs of :class:`bastion.tokens.TokenValidator` (or an introspector)."""

    def cached(self, token: str, audience: str) -> Principal | None:
        """The principal for a token verified before and still valid, without I/O."""

    async def validate(self, token: str, *, audience: str) -> Principal:
        """Verify ``token`` fully (may fetch keys or introspect).

        Raises:
            TokenError: the token is refused (``reason`` says why).
        """


@dataclass(slots=True)
class Exchange:
    """One request as the policies see it."""

    head: RequestHead
    method: str
    target: RequestTarget
    scanned: ScannedHeaders
    peer_trusted: bool
    client_ip: str
    request_id: str
    #: The gateway's W3C ``traceparent`` for this request (``tracing.gateway_traceparent``).
    traceparent: bytes = b""
    #: Whether it continues a valid ``traceparent`` of the client's.
    trace_continued: bool = False
    principal: Principal | None = None
    #: Why authentication failed (a metrics label), for the access log.
    auth_failure: str | None = None
    #: Headers policies add for the upstream, after the identity headers (claims of the token).
    upstream_headers: Headers | None = None
    #: Headers policies add to the client's response, whoever answers: the gateway's own replies
    #: and the upstream's responses alike (CORS).
    response_headers: Headers | None = None


class Policy(Protocol):
    """One check in a route's chain."""

    #: Short name, used in logs and errors.
    name: str

    def check(self, exchange: Exchange) -> PolicyResult | Awaitable[PolicyResult]:
        """``None`` to pass, a ``Reply`` to answer, or an awaitable of either."""


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """What a :data:`PolicyFactory` may use to build a route's policies."""

    gateway: GatewaySettings
    #: Verifiers by issuer (``iss``); shared by every route.
    verifiers: Mapping[str, TokenVerifier]
    metrics: GatewayMetrics
    #: Where rate-limit buckets live (:mod:`bastion.ratelimit`); ``None``: no rate limits.
    limiter: Limiter | None = None


#: Builds zero or more policies for a route; factories run in order and their policies are
#: chained in that order.
PolicyFactory = Callable[[RouteSettings, PolicyContext], Sequence[Policy]]


def problem(
    status: int, title: str, detail: str | None = None, headers: list[tuple[bytes, bytes]] | None = None
) -> Reply:
    """An RFC 9457 ``application/problem+json`` reply."""
    body: dict[str, object] = {"type": "about:blank", "title": title, "status": status}
    if detail is not None:
        body["detail"] = detail
    out = [(b"content-type", b"application/problem+json"), (b"cache-control", b"no-store")]
    if headers:
        out.extend(headers)
    return Reply(status=status, headers=out, body=orjson.dumps(body))


def _challenge_reply(status: int, title: str, challenge: str, detail: str | None = None) -> Reply:
    return problem(status, title, detail, [(b"www-authenticate", challenge.encode("ascii"))])


class AddressCheck(Protocol):
    """One rule on the client address (a list pair, later a ban set), run by :class:`IpPolicy`.

    Synchronous: a check that depends on shared state keeps a local copy fed in the background
    (as revocations are), so the hot path does not wait on a store.
    """

    def refuses(self, key: AddressKey) -> bool:
        """Whether a client at ``key`` (from :func:`bastion.net.address_key`) is refused."""


class IpRules:
    """An allow and a deny list (:class:`~bastion.net.NetworkSet`): deny wins, and a non-empty
    allow list refuses every address outside it."""

    __slots__ = ("allow", "deny")

    def __init__(self, allow: NetworkSet, deny: NetworkSet) -> None:
        """Refuse addresses in ``deny``, and outside ``allow`` when it is not empty."""
        self.allow = allow
        self.deny = deny

    def refuses(self, key: AddressKey) -> bool:
        """Whether ``key`` is denied, or not allowed."""
        if self.deny and self.deny.contains(key):
            return True
        return bool(self.allow) and not self.allow.contains(key)


@functools.lru_cache(maxsize=64)
def ip_rules(allow: Networks, deny: Networks) -> IpRules:
    """:class:`IpRules` for the settings' ``ip_allow`` and ``ip_deny``, compiled once per list
    pair (the gateway's lists are shared by every route's policy)."""
    return IpRules(NetworkSet(allow), NetworkSet(deny))


class IpPolicy:
    """Refuse clients by address: 403 when any :class:`AddressCheck` refuses.

    The address is ``exchange.client_ip``: the socket peer, or — only when the peer is one of
    ``trusted_proxies`` — the first untrusted hop of ``X-Forwarded-For`` from the right, so a
    client that is not behind a trusted proxy cannot choose it by sending that header. An
    address that cannot be read is refused (fail closed). Checks run in order: the gateway's
    lists, then the route's (which can only narrow them), and later a ban set.
    """

    name = "ip"

    def __init__(self, checks: Sequence[AddressCheck]) -> None:
        """Apply ``checks`` in order."""
        self._checks = tuple(checks)

    def check(self, exchange: Exchange) -> PolicyResult:
        """``None`` when no check refuses the client address."""
        key = address_key(exchange.client_ip)
        if key is not None:
            for rule in self._checks:
                if rule.refuses(key):
                    break
            else:
                return None
        return problem(403, "Forbidden", "Requests from this address are not allowed")


def method_not_allowed(allow: bytes) -> Reply:
    """405 with ``Allow`` (RFC 9110 §15.5.6: the origin "MUST generate an Allow header field")."""
    return problem(405, "Method Not Allowed", "The route does not allow this method", [(b"allow", allow)])


def allow_field(route: RouteSettings) -> bytes | None:
    """The ``Allow`` value of ``route`` (:meth:`RouteSettings.allowed_methods`); ``None``: all."""
    allowed = route.allowed_methods()
    return None if allowed is None else ", ".join(allowed).encode("ascii")


class ContentFilterPolicy:
    """Refuse requests whose form the route does not accept, before any token work.

    * a method outside the route's ``methods``: 405 with ``Allow`` (RFC 9110 §15.5.6), the same
      value the scope table's 405 carries (both come from :meth:`RouteSettings.allowed_methods`);
    * a header block larger than ``max_header_bytes``: 431 (RFC 6585 §5), measured as the
      engine measures its own limit (:func:`~bastion.gateway.limits.header_block_bytes`);
    * a ``Content-Length`` above ``max_body``: 413 (RFC 9110 §15.5.14) before a byte of the body
      is read. A chunked body has no length up front: the ``Forward`` carries ``max_body`` and
      the engine cuts the stream with 413 where it crosses it;
    * a body whose media type is not in ``content_types``: 415 with ``Accept`` (RFC 9110
      §15.5.16, §12.5.1). The type is compared without parameters, case-insensitively (RFC 9110
      §8.3.1: "The type and subtype tokens are case-insensitive"). A body without a
      ``Content-Type``, or with more than one (a singleton field, RFC 9110 §5.3), is refused:
      the upstream would have to guess (sniff) what it is.

    A request has a body when it is chunked or its ``Content-Length`` is above zero (RFC 9112
    §6.3); the engine has already refused ambiguous framing.
    """

    name = "filters"

    def __init__(self, route: RouteSettings) -> None:
        """Check what ``route`` sets of ``methods``, ``max_header_bytes``, ``max_body`` and
        ``content_types``."""
        allowed = route.allowed_methods() if route.methods is not None else None
        self._methods = frozenset(allowed) if allowed is not None else None
        self._allow = allow_field(route) or b""
        self._max_header_bytes = route.max_header_bytes
        self._max_body = route.max_body
        types = route.content_types
        self._types = frozenset(t.encode("ascii") for t in types) if types is not None else None
        self._accept = ", ".join(types).encode("ascii") if types is not None else b""
        self._reads_body = self._max_body is not None or self._types is not None

    def check(self, exchange: Exchange) -> PolicyResult:
        """``None`` when the request's method, header size and body fit the route."""
        if self._methods is not None and exchange.method not in self._methods:
            return method_not_allowed(self._allow)
        headers = exchange.head.headers
        if self._max_header_bytes is not None and header_block_bytes(headers) > self._max_header_bytes:
            return problem(431, "Request Header Fields Too Large", "The request header is too large")
        if not self._reads_body:
            return None
        length = 0
        chunked = False
        types: list[bytes] = []
        for name, value in headers:
            if name == b"content-length":
                length = int(value)  # one run of digits: the engine checked
            elif name == b"transfer-encoding":
                chunked = True  # exactly "chunked": the engine refuses any other coding
            elif name == b"content-type":
                types.append(value)
        if self._max_body is not None and length > self._max_body:
            return problem(413, "Content Too Large", "The request content is too large")
        if self._types is not None and (chunked or length):
            media_type = types[0].split(b";", 1)[0].strip(b" \t").lower() if len(types) == 1 else b""
            if media_type not in self._types:
                return problem(
                    415,
                    "Unsupported Media Type",
                    "The request content type is not accepted",
                    [(b"accept", self._accept)],
                )
        return None


class QueryTokenPolicy:
    """Refuse a bearer token in the query string.

    OAuth 2.1 (draft-ietf-oauth-v2-1 §5.2) drops RFC 6750 §2.3's URI query parameter: tokens in
    URLs end up in logs, history and ``Referer``. A request carrying ``access_token=`` is never
    forwarded with the token in it:

    * with an ``Authorization`` header as well, it sends two credentials — "Clients MUST NOT use
      more than one method to transmit the token in each request" (RFC 6750 §2) — and is a
      malformed request: 400 ``invalid_request``;
    * otherwise the query token is no credential here, and the request carries none: 401 with a
      bare challenge, "the resource server SHOULD NOT include an error code or other error
      information" (RFC 6750 §3.1). The problem body says where the token belongs.

    Form-body tokens (RFC 6750 §2.2) are never read either: the gateway sees only the head, so
    such a request simply has no token and gets 401.
    """

    name = "query_token"

    def __init__(self, realm: str, metrics: GatewayMetrics) -> None:
        """Answer with challenges for ``realm``."""
        self._realm = realm
        self._metrics = metrics

    def check(self, exchange: Exchange) -> PolicyResult:
        """Refuse when any query parameter is named ``access_token`` (in any %-encoding)."""
        query = exchange.target.query
        if not query or ("token" not in query.lower() and "%" not in query):
            return None
        for pair in query.split("&"):
            name = pair.split("=", 1)[0]
            if unquote_to_bytes(name.replace("+", " ")) == b"access_token":
                self._metrics.auth_failure("token_in_query")
                exchange.auth_failure = "token_in_query"
                if exchange.scanned.authorization:
                    challenge = bearer_challenge(
                        self._realm, error="invalid_request", description=_ONE_CREDENTIAL
                    )
                    return _challenge_reply(400, "Bad Request", challenge, _ONE_CREDENTIAL)
                return _challenge_reply(401, "Unauthorized", bearer_challenge(self._realm), _HEADER_ONLY)
        return None


class BearerAuthPolicy:
    """Require a valid bearer token (RFC 6750 §2.1, §3.1).

    * No ``Authorization`` header, another scheme, or ``Bearer`` with nothing after it: 401 with
      a bare challenge — "If the request lacks any authentication information …, the resource
      server SHOULD NOT include an error code or other error information" (RFC 6750 §3.1).
    * A request that is malformed as a request — more than one ``Authorization`` header, or
      several credentials joined with commas in one (how a proxy merges two field lines, RFC 9110
      §5.3; a ``b64token`` never contains a comma): 400 ``invalid_request``.
    * A ``Bearer`` credential that is not a ``b64token`` (RFC 6750 §2.1) or is too large: the
      token is malformed, "invalid_token … The resource SHOULD respond with the HTTP 401"
      (RFC 6750 §3.1).
    * A refused token: 401 ``invalid_token`` (503 when the issuer cannot be reached).

    The token is never logged or forwarded (unless the route forwards ``Authorization``).
    """

    name = "bearer"

    def __init__(
        self,
        verifiers: Sequence[tuple[str, TokenVerifier, str]],
        realm: str,
        metrics: GatewayMetrics,
    ) -> None:
        """Accept tokens from ``verifiers``: ``(issuer, verifier, expected audience)`` triples."""
        if not verifiers:
            raise ValueError("BearerAuthPolicy needs at least one verifier")
        self._verifiers = tuple(verifiers)
        self._by_issuer = {issuer: (verifier, audience) for issuer, verifier, audience in verifiers}
        self._realm = realm
        self._metrics = metrics

    def check(self, exchange: Exchange) -> PolicyResult | Awaitable[PolicyResult]:
        """Extract and verify the token; sets ``exchange.principal`` on success."""
        token_or_reply = self._extract(exchange)
        if isinstance(token_or_reply, Reply):
            return token_or_reply
        token = token_or_reply
        metrics = self._metrics
        for _, verifier, audience in self._verifiers:
            principal = verifier.cached(token, audience)
            if principal is not None:
                metrics.cache_hits += 1
                exchange.principal = principal
                return None
        metrics.cache_misses += 1
        verifier, audience = self._pick(token)
        return self._validate(exchange, verifier, token, audience)

    def _extract(self, exchange: Exchange) -> str | Reply:
        values = exchange.scanned.authorization
        if not values:
            return self._missing(exchange)
        if len(values) > 1:
            return self._invalid_request(exchange, "Send exactly one Authorization header")
        # RFC 9110 §5.5: a field value excludes leading and trailing whitespace (SP and HTAB).
        scheme, _, credentials = values[0].strip(b" \t").partition(b" ")
        if scheme.lower() != b"bearer":
            return self._missing(exchange)
        credentials = credentials.strip(b" ")
        if not credentials:
            return self._missing(exchange)
        if b"," in credentials:
            return self._invalid_request(exchange, _ONE_CREDENTIAL)
        if len(credentials) > _MAX_TOKEN:
            return self._refused(exchange, TokenTooLarge())
        if not _B64TOKEN.fullmatch(credentials):
            return self._refused(exchange, MalformedToken())
        return credentials.decode("ascii")

    def _pick(self, token: str) -> tuple[TokenVerifier, str]:
        if len(self._verifiers) == 1:
            _, verifier, audience = self._verifiers[0]
            return verifier, audience
        # Several issuers: route by the (unverified) ``iss``; the chosen verifier then checks
        # it exactly, so a forged ``iss`` only selects which key set will refuse the token.
        issuer = _peek_issuer(token)
        if issuer is not None and issuer in self._by_issuer:
            return self._by_issuer[issuer]
        _, verifier, audience = self._verifiers[0]
        return verifier, audience

    async def _validate(
        self, exchange: Exchange, verifier: TokenVerifier, token: str, audience: str
    ) -> PolicyResult:
        try:
            exchange.principal = await verifier.validate(token, audience=audience)
        except TokenError as exc:
            return self._refused(exchange, exc)
        return None

    def _refused(self, exchange: Exchange, exc: TokenError) -> Reply:
        self._metrics.auth_failure(exc.reason)
        exchange.auth_failure = exc.reason
        if exc.status_code >= 500:
            # Not the client's fault and nothing to re-authenticate with: no challenge.
            return problem(exc.status_code, "Service Unavailable", exc.description)
        return _challenge_reply(exc.status_code, "Unauthorized", exc.challenge(self._realm), exc.description)

    def _missing(self, exchange: Exchange) -> Reply:
        self._metrics.auth_failure("missing")
        exchange.auth_failure = "missing"
        return _challenge_reply(401, "Unauthorized", bearer_challenge(self._realm))

    def _invalid_request(self, exchange: Exchange, description: str) -> Reply:
        self._metrics.auth_failure("invalid_request")
        exchange.auth_failure = "invalid_request"
        challenge = bearer_challenge(self._realm, error="invalid_request", description=description)
        return _challenge_reply(400, "Bad Request", challenge, description)


def _peek_issuer(token: str) -> str | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = orjson.loads(b64url_decode(parts[1]))
    except (JOSEError, orjson.JSONDecodeError, UnicodeEncodeError):
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else None


class ScopePolicy:
    """Require the route's scopes for the request method (RFC 6750 §3.1 ``insufficient_scope``).

    The table is read per method as :meth:`RouteSettings.scopes_for` says: ``HEAD`` without an
    entry takes ``GET``'s scopes, other unlisted methods take ``"*"``'s, and a method the table
    does not cover at all is refused, never forwarded (deny by default) — with 405 and an
    ``Allow`` naming the covered methods (RFC 9110 §15.5.6: the origin "MUST generate an Allow
    header field"), not 403 ``insufficient_scope``: no token could ever be granted a scope that
    lets the request through, and an ``insufficient_scope`` challenge would send the client to
    the authorization server for one. The policy runs after authentication, so a caller without
    a valid token gets 401 and learns nothing of the table.
    """

    name = "scopes"

    def __init__(self, route: RouteSettings, realm: str, metrics: GatewayMetrics) -> None:
        """Check ``route.scopes`` (per method, ``HEAD`` as ``GET``, ``"*"`` for the rest)."""
        self._route = route
        covered = [method for method in route.scopes if method != "*"]
        if "GET" in covered and "HEAD" not in covered:
            covered.insert(covered.index("GET") + 1, "HEAD")
        self._required: dict[str, frozenset[str]] = {}
        for method in covered:
            scopes = route.scopes_for(method)
            if scopes is not None:  # covered by construction
                self._required[method] = frozenset(scopes)
        star = route.scopes.get("*")
        self._default = frozenset(star) if star is not None else None
        self._allow = allow_field(route) or b""
        self._realm = realm
        self._metrics = metrics

    def check(self, exchange: Exchange) -> PolicyResult:
        """Pass when the principal holds every required scope; else 403, or 405 for a method
        the table does not cover."""
        method = exchange.method
        required = self._required.get(method, self._default)
        if required is None:
            return method_not_allowed(self._allow)
        if not required:
            return None
        principal = exchange.principal
        if principal is not None and required <= principal.scopes:
            return None
        self._metrics.auth_failure("insufficient_scope")
        exchange.auth_failure = "insufficient_scope"
        error = InsufficientScope(self._route.scopes_for(method) or ())
        return _challenge_reply(403, "Forbidden", error.challenge(self._realm), error.description)


class ClaimHeadersPolicy:
    """Forward chosen claims of the verified token as headers (a route's ``claim_headers``).

    Values are rendered by :func:`~bastion.gateway.headers.claim_value` (strings as they are,
    other values as compact JSON, everything %-escaped to visible ASCII), so a claim can never
    inject a header. Client copies of these headers never reach this point: ``scan_request``
    drops them on every route (:attr:`GatewaySettings.stripped_headers`). Rendered headers are
    cached per principal (principals are shared by the token caches), bounded.
    """

    name = "claim_headers"

    _CACHE_SIZE: Final = 4096

    def __init__(self, claim_headers: Mapping[str, str]) -> None:
        """Send claim ``c`` as header ``claim_headers[c]`` (lower-case names)."""
        self._pairs = tuple((claim, header.encode("ascii")) for claim, header in claim_headers.items())
        self._cache: dict[int, tuple[Principal, Headers]] = {}

    def check(self, exchange: Exchange) -> PolicyResult:
        """Set ``exchange.upstream_headers``; never refuses."""
        principal = exchange.principal
        if principal is None:
            return None
        cached = self._cache.get(id(principal))
        if cached is not None and cached[0] is principal:
            headers = cached[1]
        else:
            claims = principal.claims
            headers = []
            for claim, header in self._pairs:
                value = claim_value(claims.get(claim))
                if value is not None:
                    headers.append((header, value))
            if len(self._cache) >= self._CACHE_SIZE:
                self._cache.clear()
            self._cache[id(principal)] = (principal, headers)
        if headers:
            exchange.upstream_headers = (
                headers if exchange.upstream_headers is None else [*exchange.upstream_headers, *headers]
            )
        return None


def _ip(route: RouteSettings, ctx: PolicyContext) -> Sequence[Policy]:
    checks: list[AddressCheck] = []
    gateway = ctx.gateway
    if gateway.ip_allow or gateway.ip_deny:
        checks.append(ip_rules(gateway.ip_allow, gateway.ip_deny))
    if route.ip_allow or route.ip_deny:
        checks.append(ip_rules(route.ip_allow, route.ip_deny))
    return (IpPolicy(checks),) if checks else ()


def _cors(route: RouteSettings, ctx: PolicyContext) -> Sequence[Policy]:
    if route.cors is None:
        return ()
    return (CorsPolicy(CorsRules(route)),)


def _cors_preflight(route: RouteSettings, ctx: PolicyContext) -> Sequence[Policy]:
    if route.cors is None:
        return ()
    return (PreflightPolicy(CorsRules(route)),)


def _filters(route: RouteSettings, ctx: PolicyContext) -> Sequence[Policy]:
    if (
        route.methods is None
        and route.max_body is None
        and route.content_types is None
        and route.max_header_bytes is None
    ):
        return ()
    return (ContentFilterPolicy(route),)


def _query_token(route: RouteSettings, ctx: PolicyContext) -> Sequence[Policy]:
    if route.auth == "none":
        return ()
    return (QueryTokenPolicy(ctx.gateway.realm, ctx.metrics),)


def _bearer(route: RouteSettings, ctx: PolicyContext) -> Sequence[Policy]:
    if route.auth == "none":
        return ()
    names = route.issuers if route.issuers is not None else tuple(i.issuer for i in ctx.gateway.issuers)
    triples: list[tuple[str, TokenVerifier, str]] = []
    for name in names:
        audience = route.audience or ctx.gateway.issuer(name).audience
        if audience is None:  # settings validation makes this unreachable
            raise ValueError(f"route {route.prefix!r}: no audience for issuer {name!r}")
        triples.append((name, ctx.verifiers[name], audience))
    return (BearerAuthPolicy(triples, ctx.gateway.realm, ctx.metrics),)


def _scopes(route: RouteSettings, ctx: PolicyContext) -> Sequence[Policy]:
    if route.auth == "none" or not route.scopes:
        return ()
    return (ScopePolicy(route, ctx.gateway.realm, ctx.metrics),)


def _claim_headers(route: RouteSettings, ctx: PolicyContext) -> Sequence[Policy]:
    if route.auth == "none" or not route.claim_headers:
        return ()
    return (ClaimHeadersPolicy(route.claim_headers),)


def default_factories() -> list[PolicyFactory]:
    """The built-in policy factories in chain order (a new list each call, to extend freely)."""
    from bastion.gateway import ratelimit  # imports this module

    return [
        _cors,
        _ip,
        ratelimit.before_auth,
        _cors_preflight,
        _filters,
        _query_token,
        _bearer,
        _scopes,
        ratelimit.after_auth,
        _claim_headers,
    ]


def build_chain(
    route: RouteSettings, ctx: PolicyContext, factories: Sequence[PolicyFactory]
) -> tuple[Policy, ...]:
    """Run ``factories`` for ``route`` and chain their policies in order."""
    return tuple(policy for factory in factories for policy in factory(route, ctx))


def run_chain(policies: Sequence[Policy], exchange: Exchange) -> PolicyResult | Awaitable[PolicyResult]:
    """Run ``policies`` in order; synchronous until one needs to wait."""
    for index, policy in enumerate(policies):
        result = policy.check(exchange)
        if result is None:
            continue
        if isinstance(result, Reply):
            return result
        return _continue(result, policies, index + 1, exchange)
    return None


async def _continue(
    pending: Awaitable[PolicyResult], policies: Sequence[Policy], start: int, exchange: Exchange
) -> PolicyResult:
    result = await pending
    if result is not None:
        return result
    for policy in policies[start:]:
        outcome = policy.check(exchange)
        if outcome is None:
            continue
        if isinstance(outcome, Reply):
            return outcome
        outcome = await outcome
        if outcome is not None:
            return outcome
    return None
