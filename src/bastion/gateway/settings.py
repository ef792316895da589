"""The ``[gateway]`` settings: the single documented source of every gateway option.

Every model is frozen and refuses unknown keys, so a typo in ``bastion.toml`` is an error that
names the key instead of a silently ignored option. The CLI builds these objects from TOML and
``BASTION_…`` environment variables; nothing here reads the environment or a file. Secrets never
appear here either: :class:`IntrospectionSettings` names *where* the client secret lives
(``client_secret_env`` / ``client_secret_file``) and the CLI resolves it.

Layout in TOML::

    [gateway]
    listen = "0.0.0.0:8080"
    realm = "shop"
    trusted_proxies = ["10.0.0.0/8"]

    [[gateway.issuers]]
    issuer = "https://auth.example.com"
    audience = "https://api.example.com"

    [gateway.upstreams.catalog]
    targets = ["10.0.1.5:8000", "10.0.1.6:8000"]

    [[gateway.routes]]
    prefix = "/catalog"
    upstream = "catalog"
    scopes = { GET = ["catalog:read"], "*" = ["catalog:write"] }
    strip_prefix = true

Cross-references (a route's upstream and issuers) are checked when the model is built, and the
error names the route.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated
from typing import Literal
from typing import Self

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import field_validator
from pydantic import model_validator

from bastion.gateway.headers import unsettable_header
from bastion.gateway.paths import PathError
from bastion.gateway.paths import parse_target
from bastion.tokens import MAX_LEEWAY

__all__ = [
    "BanRuleSettings",
    "BansSettings",
    "BreakerSettings",
    "CorsSettings",
    "ForwardAuthSettings",
    "GatewaySettings",
    "HealthCheckSettings",
    "IntrospectionSettings",
    "IssuerSettings",
    "LimitSettings",
    "LimitsSettings",
    "PoolSettings",
    "RateLimitSettings",
    "RouteSettings",
    "UpstreamSettings",
]

#: Methods RFC 9110 §9.2.2 calls idempotent: the only ones a retry may repeat.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 §5.6.2 token
#: RFC 9110 §8.3.1: media-type = type "/" subtype (parameters are not part of a filter).
_MEDIA_TYPE_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+/[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
#: A route's ``host``: a DNS name (letters, digits, ``-``, ``_``, dots) or an IP literal, no port.
_HOST_NAME_RE = re.compile(r"^(?:[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?$")
_HOST_IP6_RE = re.compile(r"^\[[0-9a-f:.]+\]$")
#: Methods the gateway never forwards (see ``app.py``); a route cannot allow them.
_NEVER_FORWARDED = frozenset({"CONNECT", "TRACE"})

#: A CORS origin as browsers serialise it (the Fetch standard's "ASCII serialization of an
#: origin"): scheme, host (a DNS name or an IP literal), optional port; no path, no wildcard.
_ORIGIN_RE = re.compile(
    r"^(https?)://((?:[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
    r"|\[[0-9a-f:.]+\])(?::([0-9]{1,5}))?$"
)
_DEFAULT_PORTS = {"http": "80", "https": "443"}

Seconds = Annotated[float, Field(gt=0, le=3600)]
Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {value!r}")
    return value


class IntrospectionSettings(_Frozen):
    """RFC 7662 token introspection for opaque access tokens issued by one issuer."""

    endpoint: str | None = None
    """Introspection endpoint URL; ``None`` takes ``introspection_endpoint`` from the issuer's
    RFC 8414 metadata."""
    client_id: str
    """The gateway's client id at the authorization server (client_secret_basic)."""
    client_secret_env: str | None = None
    """Name of the environment variable holding the client secret (resolved by the CLI)."""
    client_secret_file: str | None = None
    """Path of a file holding the client secret (resolved by the CLI)."""
    cache_size: int = Field(default=10_000, ge=0, le=10_000_000)
    """Most introspection results kept; ``0`` disables the cache."""
    cache_ttl: Seconds = 60.0
    """Longest time an active result is reused (never beyond the token's ``exp``)."""

    @model_validator(mode="after")
    def _one_secret_source(self) -> Self:
        if (self.client_secret_env is None) == (self.client_secret_file is None):
            raise ValueError("set exactly one of client_secret_env or client_secret_file")
        return self


class IssuerSettings(_Frozen):
    """An authorization server whose access tokens the gateway accepts."""

    issuer: str = Field(min_length=1)
    """The exact ``iss`` value (RFC 9068 §4: compared by exact string match)."""
    jwks_uri: str | None = None
    """JWKS URL; ``None`` discovers it from ``{issuer}/.well-known/oauth-authorization-server``."""
    algorithms: tuple[Literal["ES256", "ES384", "RS256", "PS256", "EdDSA"], ...] = ("ES256", "RS256")
    """Signature algorithms accepted (an allowlist: ``none`` and HMAC are never possible)."""
    audience: str | None = None
    """Default expected ``aud`` for routes that don't set their own."""
    leeway: float = Field(default=60.0, ge=0, le=MAX_LEEWAY)
    """Clock skew tolerated on ``exp``/``nbf``/``iat``, in seconds; at most 300 (the authorization
    server remembers a revocation that long past ``exp``: ``bastion.tokens.MAX_LEEWAY``)."""
    jwks_cache_ttl: float = Field(default=600.0, gt=0, le=86400)
    """Seconds the issuer's keys are fresh (less if its JWKS ``Cache-Control: max-age`` says so);
    stale keys are refreshed in the background."""
    jwks_refetch_cooldown: float = Field(default=30.0, ge=0, le=3600)
    """Least seconds between two JWKS fetches, however many tokens name an unknown ``kid``: a
    flood of made-up key ids costs at most one request per cooldown."""
    token_cache_size: int = Field(default=10_000, ge=0, le=10_000_000)
    """Verified tokens remembered (until their ``exp``), so a repeated token costs a dict lookup
    instead of a signature check; ``0`` disables the cache."""
    introspection: IntrospectionSettings | None = None
    """Introspect opaque (non-JWT) tokens from this issuer; ``None`` refuses opaque tokens."""

    @field_validator("algorithms")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one algorithm is required")
        return value


class PoolSettings(_Frozen):
    """Connection pool of one upstream (per target)."""

    max_connections: int = Field(default=100, ge=1, le=100_000)
    """Most open connections per target."""
    max_idle: int = Field(default=100, ge=0, le=100_000)
    """Most idle keep-alive connections kept per target. Below the number of requests in flight
    at peak, connections are closed and reopened under load (each costs a TCP handshake and leaves
    a TIME_WAIT socket), so keep it near ``max_connections``."""
    idle_timeout: Seconds = 30.0
    """Idle keep-alive connections are closed after this many seconds."""


class HealthCheckSettings(_Frozen):
    """Target health: passive (connect failures) and optional active probes."""

    path: str | None = None
    """Origin-form path probed with ``GET``; ``None`` disables active probes (passive checks
    still apply)."""
    interval: Seconds = 5.0
    """Seconds between active probes of each target."""
    timeout: Seconds = 2.0
    """Seconds a probe may take."""
    failure_threshold: int = Field(default=3, ge=1, le=100)
    """Consecutive connect failures that mark a target down."""
    cool_off: Seconds = 10.0
    """Seconds a target stays down after ``failure_threshold`` failures."""

    @field_validator("path")
    @classmethod
    def _origin_form(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("health check path must start with '/'")
        return value


class BreakerSettings(_Frozen):
    """Circuit breaker per target: stop sending to a target that keeps failing."""

    failures: int = Field(default=5, ge=0, le=10_000)
    """Failures within ``window`` that open a target's breaker; ``0`` disables the breaker."""
    window: Seconds = 10.0
    """Seconds over which failures are counted."""
    open_seconds: Seconds = 30.0
    """Seconds the breaker stays open before one trial request is let through."""


class LimitsSettings(_Frozen):
    """Sizes and timeouts enforced on every client connection (the engine's ``EngineLimits``)."""

    max_request_line: int = Field(default=8 * 1024, ge=256, le=1024 * 1024)
    """Longest request target accepted, in bytes (longer: 414)."""
    max_header_bytes: int = Field(default=32 * 1024, ge=1024, le=1024 * 1024)
    """Largest header block, in bytes (larger: 431)."""
    max_headers: int = Field(default=100, ge=1, le=10_000)
    """Most header fields in one request (more: 431)."""
    max_body: int = Field(default=10 * 1024 * 1024, ge=0)
    """Largest request body, in bytes (larger: 413)."""
    header_timeout: Seconds = 10.0
    """Seconds to receive a complete header block (slowloris protection: 408)."""
    keepalive_timeout: Seconds = 60.0
    """Seconds an idle keep-alive connection waits for its next request."""
    body_timeout: Seconds = 30.0
    """Seconds to wait for the next request-body byte."""
    min_body_rate: int = Field(default=512, ge=0, le=1_000_000_000)
    """Bytes per second a request body must average after ``body_timeout`` (each byte buys
    1/rate more seconds), so a client dribbling a byte at a time cannot hold a request open;
    ``0`` turns it off."""


class ForwardAuthSettings(_Frozen):
    """Forward-auth mode (``[gateway.forward_auth]``): an endpoint that tells a proxy in front
    (nginx ``auth_request``, Traefik ``ForwardAuth``, Envoy's HTTP ``ext_authz``) whether the
    request it holds may pass, and with which identity, instead of proxying it.

    The endpoint answers only peers in ``trusted_proxies``: the original method and URI come
    from headers a client must not choose. See ``docs/gateway.md`` ("Forward-auth")."""

    enabled: bool = False
    """Serve the forward-auth endpoint on the public listener (needs ``trusted_proxies``)."""
    path: str = "/_bastion/auth"
    """Canonical path of the endpoint; requests to it never reach a route."""
    mode: Literal["headers", "path_prefix"] = "headers"
    """Where the original request is read from. ``headers``: ``X-Original-Method`` and
    ``X-Original-URI`` (nginx, set in its config) or ``X-Forwarded-Method`` and
    ``X-Forwarded-Uri`` (Traefik), one pair exactly, both fields once; ``path_prefix``: the
    request's own method, and the target below ``path`` (Envoy ``ext_authz`` with
    ``path_prefix``: ``/_bastion/auth/orders/42?x=1`` checks ``GET /orders/42?x=1``). The host,
    which picks host routes, is ``X-Forwarded-Host``: required in ``headers`` mode, in
    ``path_prefix`` mode ``Host`` when it is absent."""

    @field_validator("path")
    @classmethod
    def _canonical_path(cls, value: str) -> str:
        try:
            canonical = parse_target(value.encode("ascii")).path
        except (PathError, UnicodeEncodeError) as exc:
            raise ValueError(f"{value!r} is not a canonical path: {exc}") from exc
        if canonical != value or "?" in value or value == "/" or value.endswith("/"):
            raise ValueError(f"{value!r} must be a canonical path below '/', without a trailing '/'")
        return value


class UpstreamSettings(_Frozen):
    """A named group of upstream targets (``[gateway.upstreams.NAME]``)."""

    targets: tuple[str, ...] = Field(min_length=1)
    """``host:port`` or ``http://host:port`` entries, balanced round-robin."""
    pool: PoolSettings = PoolSettings()
    """Connection pool limits."""
    health: HealthCheckSettings = HealthCheckSettings()
    """Passive and active health checks."""
    breaker: BreakerSettings = BreakerSettings()
    """Circuit breaker."""

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for target in value:
            bare = target.removeprefix("http://").removeprefix("https://").rstrip("/")
            _host_port(bare)
        return value


def _method_names(value: tuple[str, ...]) -> tuple[str, ...]:
    """``value`` checked as a non-empty list of upper-case method names the gateway forwards."""
    if not value:
        raise ValueError("methods must name at least one method (or be left out)")
    for method in value:
        if not _TOKEN_RE.match(method) or method != method.upper():
            raise ValueError(f"method {method!r} must be an upper-case method name")
        if method in _NEVER_FORWARDED:
            raise ValueError(f"{method} is never forwarded by the gateway")
    return value


def _cors_origin(value: str) -> str:
    """``value`` as the browser's ``Origin`` header spells it: lower case, no default port."""
    origin = value.lower()
    match = _ORIGIN_RE.match(origin)
    if match is None:
        raise ValueError(
            f"origins: {value!r} is not an origin (scheme://host[:port] with http or https, "
            "no path, not even '/', no wildcard)"
        )
    scheme, host, port = match.groups()
    if port is not None and not 0 < int(port) <= 65535:
        raise ValueError(f"origins: {value!r} has an invalid port")
    if port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"  # browsers leave the default port out of Origin
    return origin


class CorsSettings(_Frozen):
    """Cross-origin resource sharing on one route (``[gateway.routes.cors]``; the Fetch
    standard's CORS protocol).

    Preflights (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) are answered
    by the gateway itself, without a token and without reaching the upstream. Every response on
    the route carries ``Vary: Origin``, those to an allowed origin the CORS headers; the
    upstream's own ``Access-Control-*`` headers are dropped, so it cannot widen the policy."""

    origins: tuple[str, ...] = Field(min_length=1)
    """Origins allowed to read responses, exactly as browsers send them
    (``"https://app.example.com"``, ``"http://localhost:5173"``): scheme, host, port; no path,
    no wildcard. ``["*"]`` alone allows any origin, only with ``credentials = false``. The
    ``null`` origin (sandboxed frames, ``file:`` pages) is never allowed."""
    methods: tuple[str, ...] | None = None
    """Methods a preflight may ask for; each must be one the route accepts. ``None``: the
    methods the route accepts (its ``methods``, else its ``scopes`` table)."""
    headers: tuple[str, ...] = ()
    """Request headers a cross-origin request may send beyond the CORS-safelisted ones
    (``["Content-Type", "X-Trace"]``; ``Content-Type`` is needed for JSON bodies).
    ``Authorization`` is always allowed on a route with ``auth = "required"``."""
    expose_headers: tuple[str, ...] = ()
    """Response headers script may read beyond the CORS-safelisted ones (``["ETag",
    "Location"]``). The gateway's own ``WWW-Authenticate``, ``Retry-After``, ``RateLimit``,
    ``RateLimit-Policy`` and ``X-Request-Id`` are always exposed, so an application can read why
    it was refused."""
    credentials: bool = False
    """Send ``Access-Control-Allow-Credentials: true``: the browser then sends cookies and
    reads the response of a credentialed request. Needs explicit ``origins`` (never ``*``)."""
    max_age: int = Field(default=600, ge=0, le=86400)
    """Seconds a browser may cache a preflight's answer (``Access-Control-Max-Age``; Chromium
    caps it at 7200)."""

    @field_validator("origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "*" in value:
            if len(value) != 1:
                raise ValueError("origins: '*' stands alone (list origins, or '*' only)")
            return value
        out = []
        for origin in value:
            if origin.lower() == "null":
                raise ValueError("origins: 'null' is never allowed (any sandboxed page sends it)")
            if "*" in origin:
                raise ValueError(f"origins: {origin!r} has a wildcard (list each origin)")
            out.append(_cors_origin(origin))
        return tuple(dict.fromkeys(out))

    @field_validator("methods")
    @classmethod
    def _cors_methods(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else tuple(dict.fromkeys(_method_names(value)))

    @field_validator("headers", "expose_headers")
    @classmethod
    def _cors_headers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _TOKEN_RE.match(name) or name == "*":
                raise ValueError(f"{name!r} is not a header name (list each header, no '*')")
        return tuple(dict.fromkeys(name.lower() for name in value))

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> Self:
        if self.credentials and self.origins == ("*",):
            # Fetch standard, CORS check: with credentials, "*" never matches; a gateway that
            # reflected any origin instead would let every site read the user's responses.
            raise ValueError("origins = ['*'] cannot go with credentials = true (list the origins)")
        return self


class LimitSettings(_Frozen):
    """One rate limit: ``requests`` per ``per`` seconds for each bucket of ``key``.

    Decided with GCRA (:mod:`bastion.ratelimit.gcra`): over any interval of ``t`` seconds, a
    bucket admits at most ``burst + t × requests / per`` requests — ``burst`` at once after an
    idle period, then one every ``per / requests`` seconds."""

    requests: int = Field(ge=1, le=1_000_000_000)
    """Requests admitted per ``per`` seconds (the ``q`` of ``RateLimit-Policy``)."""
    per: float = Field(gt=0, le=86_400 * 366)
    """The period, in seconds (``1``, ``60``, ``3600``; the ``w`` of ``RateLimit-Policy``)."""
    burst: int | None = Field(default=None, ge=1, le=1_000_000_000)
    """Most requests admitted at once after an idle period; ``None``: ``requests``."""
    key: Literal["client", "subject", "ip", "route", "header"] = "ip"
    """What a bucket is per: the token's ``client_id``, its ``sub``, the client address (as
    resolved through ``trusted_proxies``; IPv6 addresses grouped by /64), the route as a whole,
    or the value of ``header``. ``client`` and ``subject`` need ``auth = "required"`` and are
    decided after the token is checked; the others before it, so a flood is refused before any
    token work."""
    header: str | None = None
    """The header whose value is the bucket, with ``key = "header"`` (requests without it share
    one bucket)."""
    name: str | None = Field(default=None, pattern=r"^[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}$")
    """The policy's name in the ``RateLimit-Policy`` and ``RateLimit`` fields; ``None``:
    ``{requests}-per-{per}s`` (``10-per-1s``)."""

    @model_validator(mode="after")
    def _header_key(self) -> Self:
        if (self.key == "header") != (self.header is not None):
            raise ValueError('set header with key = "header" (and only then)')
        if self.header is not None and not _TOKEN_RE.match(self.header):
            raise ValueError(f"{self.header!r} is not a header name")
        return self

    @property
    def policy_name(self) -> str:
        """``name``, or the default ``{requests}-per-{per}s``."""
        return self.name if self.name is not None else f"{self.requests}-per-{self.per:g}s"


class RateLimitSettings(_Frozen):
    """Rate limits of a route, or the gateway's default for routes that set none (``rate_limit``).

    A request over a limit is refused with 429, ``Retry-After`` and the ``RateLimit`` and
    ``RateLimit-Policy`` fields (draft-ietf-httpapi-ratelimit-headers-12). Buckets live in the
    fast-state store: Redis (shared by every gateway), the SQLite state file (shared by the
    workers of one machine) or, with ``memory://``, this process."""

    limits: tuple[LimitSettings, ...] = ()
    """The limits; a request must fit every one (``[{ requests = 10, per = 1 }, { requests =
    1000, per = 3600 }]``). Empty: no rate limit."""
    on_error: Literal["closed", "open"] = "closed"
    """When the store cannot decide (Redis down): ``closed`` refuses the request with 503,
    ``open`` lets it through. Each fallback is logged and counted
    (``bastion_gateway_rate_limit_errors_total``)."""

    @field_validator("limits")
    @classmethod
    def _distinct_names(cls, value: tuple[LimitSettings, ...]) -> tuple[LimitSettings, ...]:
        names = [limit.policy_name for limit in value]
        if len(set(names)) != len(names):
            raise ValueError("two limits have the same name (set name on one of them)")
        return value


class RouteSettings(_Frozen):
    """One ``[[gateway.routes]]`` entry: a path prefix, its upstream and its policies."""

    prefix: str
    """Canonical path prefix, matched on segment boundaries (``/api`` matches ``/api`` and
    ``/api/x``, not ``/apix``), case-sensitively; the longest matching prefix wins. With
    ``match = "exact"``, the one path the route serves."""
    match: Literal["prefix", "exact"] = "prefix"
    """``prefix``: ``prefix`` and every path below it; ``exact``: the canonical path ``prefix``
    alone (``/api/read``, not ``/api/read/`` or ``/api/read/x``). An exact route wins over any
    prefix route for its path."""
    host: str | None = None
    """Serve only requests whose ``Host`` names this host (``api.example.com``): compared
    case-insensitively, without the port and a trailing dot (RFC 9110 §7.2). For a request naming
    it, the host's routes are tried first and the host-less ones only when none of them
    matches. ``None``: any host."""
    upstream: str
    """Name of a ``[gateway.upstreams.NAME]`` entry."""
    auth: Literal["required", "none"] = "required"
    """``required``: a valid bearer token is needed; ``none``: forwarded without token checks
    (spoofed identity headers are still stripped)."""
    issuers: tuple[str, ...] | None = None
    """Issuers whose tokens this route accepts; ``None`` accepts every configured issuer."""
    scopes: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """Scopes required per method, all of them needed (``{GET = ["catalog:read"]}``). ``HEAD``
    without an entry of its own takes ``GET``'s scopes; the ``"*"`` entry applies to every other
    method not listed. Deny by default: a method the table does not cover (no entry, no ``"*"``)
    is refused with 405 and an ``Allow`` listing the covered methods, once the token is valid.
    Empty: any valid token is enough, for every method."""
    audience: str | None = None
    """Expected ``aud``; ``None`` takes the issuer's ``audience``."""
    strip_prefix: bool = False
    """Remove the prefix before forwarding (``/api/x`` → ``/x``)."""
    rewrite_prefix: str | None = None
    """Replace the prefix before forwarding (``/api/x`` → ``{rewrite_prefix}/x``)."""
    forward_authorization: bool = False
    """Forward the client's ``Authorization`` header upstream (off: services see only the
    ``X-Bastion-*`` identity headers)."""
    connect_timeout: Seconds = 2.0
    """Seconds to open an upstream connection."""
    read_timeout: Seconds = 30.0
    """Seconds between two reads from the upstream."""
    total_timeout: Seconds = 60.0
    """Seconds for the whole upstream exchange."""
    retry: bool = False
    """Retry once on another target after a connect failure; applied to idempotent methods only
    (RFC 9110 §9.2.2)."""
    ip_allow: Networks = ()
    """Client networks (CIDR) this route serves, on top of the gateway's ``ip_allow``: a client
    must be in both lists where both are set. Empty: no route-level allow list."""
    ip_deny: Networks = ()
    """Client networks (CIDR) refused on this route (403), besides the gateway's ``ip_deny``."""
    claim_headers: dict[str, str] = Field(default_factory=dict)
    """Token claims forwarded as headers, claim name to header name (``{ roles =
    "X-Bastion-Roles", email = "X-User-Email" }``); top-level claims only. A string claim is sent
    as it is, any other value (a list, an object, a number) as compact JSON; anything but
    visible ASCII, and ``%``, is %-escaped. A missing or ``null`` claim sends no header. Client
    copies of these headers are dropped on every route, like ``X-Bastion-*`` and
    ``strip_headers``. Framing, hop-by-hop, forwarding and credential headers, and the
    gateway's own ``X-Bastion-Subject``/``-Client``/``-Scopes``, cannot be set."""
    methods: tuple[str, ...] | None = None
    """Methods the route accepts (``["GET", "POST"]``); ``GET`` brings ``HEAD`` with it (RFC
    9110 §9.3.2). Any other method is refused with 405 and an ``Allow`` naming the accepted ones,
    before the token is checked. With a ``scopes`` table, each listed method must be covered by
    it. ``None``: the methods the ``scopes`` table covers (every method without a table or with
    a ``"*"`` entry)."""
    max_body: int | None = Field(default=None, ge=0)
    """Largest request body on this route, in bytes: a larger ``Content-Length`` is refused with
    413 up front, and a chunked body is cut with 413 when it grows past it. At most
    ``gateway.limits.max_body`` (which applies when this is ``None``)."""
    content_types: tuple[str, ...] | None = None
    """Media types a request body may have (``["application/json"]``), compared without
    parameters and case-insensitively (``Application/JSON; charset=utf-8`` is
    ``application/json``). A request with a body and another type, no ``Content-Type`` or more
    than one is refused with 415 and an ``Accept`` listing these. Requests without a body pass.
    ``None``: any type."""
    max_header_bytes: int | None = Field(default=None, ge=1)
    """Largest header block on this route, in bytes (names and values plus 4 per field, as
    ``gateway.limits.max_header_bytes`` counts); larger: 431. At most the gateway's limit (which
    applies when this is ``None``)."""
    cors: CorsSettings | None = None
    """Cross-origin requests from browsers (``[gateway.routes.cors]``, see :class:`CorsSettings`);
    ``None``: no CORS, preflights are ordinary ``OPTIONS`` requests."""
    rate_limit: RateLimitSettings | None = None
    """The route's rate limits (``{ limits = [{ requests = 10, per = 1 }], on_error = "open"
    }``); ``None``: the gateway's ``rate_limit``. ``{ limits = [] }`` turns the default off."""

    @field_validator("prefix", "rewrite_prefix")
    @classmethod
    def _canonical_prefix(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            canonical = parse_target(value.encode("ascii")).path
        except (PathError, UnicodeEncodeError) as exc:
            raise ValueError(f"{value!r} is not a canonical path: {exc}") from exc
        if canonical != value or "?" in value:
            raise ValueError(f"{value!r} is not a canonical path (use {canonical!r})")
        if value != "/" and value.endswith("/"):
            raise ValueError(f"{value!r} must not end with '/'")
        return value

    @field_validator("scopes")
    @classmethod
    def _scope_methods(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for method, scopes in value.items():
            if method != "*" and (not _TOKEN_RE.match(method) or method != method.upper()):
                raise ValueError(f"scopes key {method!r} must be an upper-case method or '*'")
            for scope in scopes:
                # RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
                if not scope or any(c in '"\\' or not "\x21" <= c <= "\x7e" for c in scope):
                    raise ValueError(f"invalid scope {scope!r}")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host = value.lower()
        host = host.removesuffix(".")
        if not (_HOST_NAME_RE.match(host) or _HOST_IP6_RE.match(host)) or len(host) > 253:
            raise ValueError(f"{value!r} is not a host name (no port, no scheme, no wildcard)")
        return host

    @field_validator("claim_headers")
    @classmethod
    def _claim_headers(cls, value: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for claim, header in value.items():
            if not claim:
                raise ValueError("claim_headers: a claim name is empty")
            if not _TOKEN_RE.match(header):
                raise ValueError(f"claim_headers: {header!r} is not a header name")
            if "_" in header:
                # CGI-style servers read ``_`` as ``-``: a client's ``X-User-Email`` would then
                # stand beside the gateway's ``X_User_Email`` as the same variable.
                raise ValueError(f"claim_headers: {header!r} has '_' (use '-')")
            if unsettable_header(header):
                raise ValueError(f"claim_headers: {header!r} is a header the gateway owns")
            name = header.lower()
            if name in out.values():
                raise ValueError(f"claim_headers: {header!r} is set from two claims")
            out[claim] = name
        return out

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if len(set(_method_names(value))) != len(value):
            raise ValueError("methods are listed more than once")
        return value

    @field_validator("content_types")
    @classmethod
    def _content_types(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("content_types must name at least one media type (or be left out)")
        for media_type in value:
            if not _MEDIA_TYPE_RE.match(media_type):
                raise ValueError(f"{media_type!r} is not a media type (type/subtype, no parameters)")
        return tuple(dict.fromkeys(media_type.lower() for media_type in value))

    @model_validator(mode="after")
    def _rewrite(self) -> Self:
        if self.strip_prefix and self.rewrite_prefix is not None:
            raise ValueError("set strip_prefix or rewrite_prefix, not both")
        if self.methods is not None and self.scopes and self.auth != "none":
            for method in self.methods:
                if self.scopes_for(method) is None:
                    raise ValueError(
                        f"method {method} is in methods but the scopes table does not cover it "
                        "(add an entry for it or a '*' entry)"
                    )
        return self

    @model_validator(mode="after")
    def _cors_methods_accepted(self) -> Self:
        if self.cors is None or self.cors.methods is None:
            return self
        accepted = self.allowed_methods()
        for method in self.cors.methods:
            if accepted is not None and method not in accepted:
                raise ValueError(f"cors.methods: {method} is not a method this route accepts")
        return self

    @property
    def name(self) -> str:
        """The route's label in logs, metrics and errors: ``prefix``, with ``=`` before it for an
        exact route and the host before that (``api.example.com=/api/read``)."""
        path = f"={self.prefix}" if self.match == "exact" else self.prefix
        return path if self.host is None else f"{self.host}{path}"

    def allowed_methods(self) -> tuple[str, ...] | None:
        """The methods this route accepts, in the order of the ``Allow`` field; ``None``: all.

        The one place the route's method set is worked out, for the 405 of ``methods`` and of
        the ``scopes`` table alike: ``methods`` when set, else the methods the table covers
        (``None`` when it has a ``"*"`` entry or there is no table). ``GET`` brings ``HEAD``
        (RFC 9110 §9.3.2: the same response without content).
        """
        if self.methods is not None:
            listed = list(self.methods)
        elif self.scopes and "*" not in self.scopes and self.auth != "none":
            listed = list(self.scopes)
        else:
            return None
        if "GET" in listed and "HEAD" not in listed:
            listed.insert(listed.index("GET") + 1, "HEAD")
        return tuple(listed)

    def scopes_for(self, method: str) -> tuple[str, ...] | None:
        """The scopes a ``method`` request needs on this route; ``None``: the method is refused.

        ``HEAD`` without an entry takes ``GET``'s (RFC 9110 §9.3.2: the same response without
        content, so the same information); other methods without an entry take ``"*"``'s. With
        a table but no entry and no ``"*"``, the method is not allowed at all (deny by default).
        """
        scopes = self.scopes
        if not scopes:
            return ()
        found = scopes.get(method)
        if found is None and method == "HEAD":
            found = scopes.get("GET")
        return found if found is not None else scopes.get("*")


class BanRuleSettings(_Frozen):
    """When one kind of failure bans a client address, and for how long (``[gateway.bans.KIND]``)."""

    threshold: int = Field(default=20, ge=0, le=1_000_000)
    """Failures of this kind from one address (an IPv6 client's ``/64``) that earn a ban, counted
    in a window that opens at the first of them; ``0`` never bans for this kind."""
    window: float = Field(default=60.0, gt=0, le=86400)
    """Seconds the count runs from its first failure; a new count starts after it."""
    duration: float = Field(default=600.0, gt=0, le=365 * 86400)
    """Seconds the first ban lasts; at least ``window``."""
    factor: float = Field(default=2.0, ge=1, le=100)
    """Each further ban of the address within ``gateway.bans.repeat_window`` lasts this many times
    the one before (``1``: no escalation)."""
    max_duration: float = Field(default=86400.0, gt=0, le=365 * 86400)
    """The longest an escalated ban lasts."""

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.max_duration < self.duration:
            raise ValueError("max_duration must be at least duration")
        if self.duration < self.window:
            raise ValueError("duration must be at least window (a count outlives no ban)")
        return self

    def ban_seconds(self, repeat: int) -> float:
        """How long the ``repeat``-th ban (1 for the first) lasts: ``duration × factor^(repeat−1)``,
        at most ``max_duration``."""
        exponent = max(0, repeat - 1)
        if self.factor > 1 and exponent * math.log(self.factor) > math.log(self.max_duration / self.duration):
            return self.max_duration
        return min(self.max_duration, self.duration * self.factor**exponent)


class BansSettings(_Frozen):
    """Automatic bans of client addresses (``[gateway.bans]``): too many authentication failures,
    rate-limit refusals or refused requests from one address ban it for a while, across every
    gateway process sharing the fast-state store."""

    enabled: bool = True
    """Count failures and enforce bans (``bastion bans add`` bans are enforced only when on)."""
    auth: BanRuleSettings = BanRuleSettings()
    """Authentication failures: a 401 for a refused, malformed or misplaced token, or a 400
    for two credentials (a request without any credential is not counted)."""
    rate_limit: BanRuleSettings = BanRuleSettings(threshold=50, duration=300.0)
    """Rate-limit refusals (429)."""
    refused: BanRuleSettings = BanRuleSettings()
    """Refused requests: a request target refused by the strict path rules or as route confusion
    (400), and requests the HTTP front refuses as malformed or smuggling attempts (400)."""
    repeat_window: float = Field(default=7 * 86400.0, gt=0, le=365 * 86400)
    """Seconds an address's ban count is remembered after its last automatic ban, for escalation."""
    exempt: Networks = ()
    """Client networks (CIDR) never banned automatically nor by ``bastion bans add`` (monitoring,
    the office). ``gateway.trusted_proxies`` are never banned either."""


class GatewaySettings(_Frozen):
    """The ``[gateway]`` table."""

    listen: str = "127.0.0.1:8080"
    """``host:port`` of the public listener."""
    admin_listen: str | None = "127.0.0.1:9100"
    """``host:port`` of the admin listener (``/metrics``, ``/healthz``); ``""`` disables it.
    Keep it off the public network. Under ``bastion serve`` it is the server's one metrics
    listener (every component, every worker) unless ``metrics.listen`` is set."""
    tls_cert: str | None = None
    """PEM certificate chain for TLS on the public listener (with ``tls_key``)."""
    tls_key: str | None = None
    """PEM private key for ``tls_cert``."""
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    """CIDRs of proxies in front of the gateway whose ``X-Forwarded-For``, ``X-Forwarded-Proto``,
    ``X-Forwarded-Host`` and ``X-Request-Id`` are believed. Empty: the socket peer is the client."""
    forward_auth: ForwardAuthSettings = ForwardAuthSettings()
    """Forward-auth mode for a proxy in front (``[gateway.forward_auth]``); off by default."""
    ip_allow: Networks = ()
    """Client networks (CIDR, IPv4 and IPv6) served on every route; any other client is refused
    with 403. The client address is the one resolved through ``trusted_proxies``; an
    IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) is read as IPv4, in entries and clients
    alike. Empty: every network (subject to ``ip_deny``)."""
    ip_deny: Networks = ()
    """Client networks (CIDR) refused on every route with 403, even inside ``ip_allow``. A
    route's own ``ip_allow``/``ip_deny`` can only narrow these, never reopen them."""
    strip_headers: tuple[str, ...] = ()
    """Extra client headers dropped before forwarding (e.g. ``X-User-Id``); every ``X-Bastion-*``
    header is always dropped."""
    realm: str = Field(default="bastion", pattern=r"^[\x20\x21\x23-\x5b\x5d-\x7e]*$")
    """``realm`` of the ``WWW-Authenticate: Bearer`` challenge (RFC 6750 §3)."""
    server_header: str | None = "bastion"
    """``Server`` header on responses (the upstream's is always hidden); ``""`` sends none."""
    access_log: str | None = "-"
    """Where the JSON-lines access log goes: ``"-"`` for stdout, a file path (opened for append
    by the CLI; relative paths are in the data dir), or ``""`` for no access log."""
    access_log_flush_lines: int = Field(default=256, ge=1, le=1_000_000)
    """Access-log lines buffered before a write."""
    access_log_flush_interval: Seconds = 0.1
    """Longest time an access-log line waits in the buffer, in seconds."""
    limits: LimitsSettings = LimitsSettings()
    """Client connection limits (``[gateway.limits]``)."""
    drain_seconds: Seconds = 60.0
    """After a reload, pools of removed upstreams are closed this long after the swap, so that
    in-flight requests finish."""
    issuers: tuple[IssuerSettings, ...] = ()
    """Authorization servers whose tokens are accepted (``[[gateway.issuers]]``)."""
    upstreams: dict[str, UpstreamSettings] = Field(default_factory=dict)
    """Upstream groups by name (``[gateway.upstreams.NAME]``)."""
    routes: tuple[RouteSettings, ...] = ()
    """Routes (``[[gateway.routes]]``); order does not matter: a route of the request's host
    before a host-less one, then an exact route, then the longest prefix."""
    rate_limit: RateLimitSettings = RateLimitSettings()
    """Rate limits of every route that sets no ``rate_limit`` of its own
    (``[gateway.rate_limit]``)."""
    bans: BansSettings = BansSettings()
    """Automatic and manual bans of client addresses (``[gateway.bans]``)."""

    @field_validator("listen", "admin_listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        return None if value is None or value == "" else _host_port(value)

    @field_validator("access_log")
    @classmethod
    def _access_log(cls, value: str | None) -> str | None:
        return value or None  # TOML has no null: "" turns the log off

    @field_validator("server_header")
    @classmethod
    def _server_header(cls, value: str | None) -> str | None:
        return value or None  # TOML has no null: "" sends no Server header

    @field_validator("strip_headers")
    @classmethod
    def _header_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _TOKEN_RE.match(name):
                raise ValueError(f"{name!r} is not a header name")
        return tuple(name.lower() for name in value)

    @model_validator(mode="after")
    def _cross_references(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        for name in self.upstreams:
            if not _TOKEN_RE.match(name):
                raise ValueError(f"upstream name {name!r} must be a plain token")
        issuers = {issuer.issuer: issuer for issuer in self.issuers}
        if len(issuers) != len(self.issuers):
            raise ValueError("issuers must be unique")
        seen: set[str] = set()
        for route in self.routes:
            where = f"route {route.name!r}"
            if route.name in seen:
                raise ValueError(f"{where}: duplicate prefix")
            seen.add(route.name)
            if route.upstream not in self.upstreams:
                raise ValueError(f"{where}: unknown upstream {route.upstream!r}")
            if route.max_body is not None and route.max_body > self.limits.max_body:
                raise ValueError(f"{where}: max_body is above gateway.limits.max_body")
            if route.max_header_bytes is not None and route.max_header_bytes > self.limits.max_header_bytes:
                raise ValueError(f"{where}: max_header_bytes is above gateway.limits.max_header_bytes")
            limits = (route.rate_limit or self.rate_limit).limits
            if route.auth == "none" and any(limit.key in ("client", "subject") for limit in limits):
                raise ValueError(
                    f'{where}: a rate limit keyed by client or subject needs auth = "required"'
                    + ("" if route.rate_limit else " (the default rate_limit: give the route its own)")
                )
            if route.auth == "none":
                if route.claim_headers:
                    raise ValueError(f'{where}: claim_headers needs auth = "required"')
                continue
            accepted = route.issuers if route.issuers is not None else tuple(issuers)
            if not accepted:
                raise ValueError(f"{where}: auth is required but no issuer is configured")
            for name in accepted:
                if name not in issuers:
                    raise ValueError(f"{where}: unknown issuer {name!r}")
                if route.audience is None and issuers[name].audience is None:
                    raise ValueError(f"{where}: no audience (set the route's audience or issuer {name!r}'s)")
        return self

    @model_validator(mode="after")
    def _forward_auth_needs_proxies(self) -> Self:
        if self.forward_auth.enabled and not self.trusted_proxies:
            raise ValueError(
                "forward_auth.enabled needs trusted_proxies: the endpoint believes the original "
                "method and URI only from the proxies listed there"
            )
        return self

    @property
    def stripped_headers(self) -> tuple[str, ...]:
        """Client headers dropped before forwarding besides ``X-Bastion-*``: ``strip_headers``
        and every header a route sets from a claim (dropped on every route, so no route lets a
        client speak for the claim)."""
        names = dict.fromkeys(self.strip_headers)
        for route in self.routes:
            names.update(dict.fromkeys(route.claim_headers.values()))
        return tuple(names)

    def issuer(self, name: str) -> IssuerSettings:
        """The issuer settings for ``name``.

        Raises:
            KeyError: no such issuer.
        """
        for issuer in self.issuers:
            if issuer.issuer == name:
                return issuer
        raise KeyError(name)
