"""Bastion's settings tree: the one documented source of every option and its default.

Each section is a frozen pydantic model; each field's docstring is its documentation. Nothing
here reads the environment or files: :mod:`bastion.cli.config` loads ``bastion.toml``, overlays
``BASTION_SECTION__KEY`` environment variables and validates the result into :class:`Settings`.
Secrets (the key-encryption key, client secrets) never live in this tree's TOML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from typing import Literal
from typing import NamedTuple
from typing import get_args
from typing import get_origin

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import field_validator
from pydantic import model_validator

from bastion.gateway.settings import GatewaySettings

SigningAlgorithm = Literal["ES256", "ES384", "RS256", "PS256", "EdDSA"]


class Section(BaseModel):
    """Base of every section: frozen, unknown keys are errors, docstrings are descriptions."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


def _listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


class StorageSettings(Section):
    """Where state lives: durable records and shared fast state."""

    database_url: str = ""
    """Durable store. Empty: a SQLite file ``bastion.db`` in the data dir. Accepts
    ``sqlite:////absolute/path.db`` (four slashes: a relative path would depend on the working
    directory, so it is refused) and ``postgresql://user:password@host/db``; the async driver is
    chosen inside."""

    state_url: str = ""
    """Fast-state store (codes, throttles, replay caches, revocation feed). Empty: a SQLite file
    ``state.db`` in the data dir, shared by every process on this machine. ``memory://`` keeps it
    in one process (tests, single-process demos); ``sqlite:////absolute/path.db`` names another
    file; ``redis://host:port/db`` shares it across machines."""

    auto_migrate: bool = True
    """Apply pending schema migrations when ``bastion serve`` starts."""

    pool_size: int = Field(default=10, ge=1, le=1000)
    """Connections per process to PostgreSQL or Redis."""

    @field_validator("database_url", "state_url")
    @classmethod
    def _absolute_sqlite(cls, value: str) -> str:
        if value.startswith("sqlite:///"):
            path = value.removeprefix("sqlite:///").split("?", 1)[0]
            if path not in ("", ":memory:") and not path.startswith("/"):
                raise ValueError(
                    f"{value!r} is a relative SQLite path, which would depend on the working directory: "
                    f"write it absolute (sqlite:////var/lib/bastion/{Path(path).name}), or leave the "
                    "setting empty for a file in data_dir"
                )
        return value


class LoginThrottleSettings(Section):
    """Password-guessing limits, counted in the fast-state store (shared by every process)."""

    free_attempts: int = Field(default=3, ge=0, le=100)
    """Failed sign-ins per account before answers slow down."""

    base_delay: float = Field(default=0.5, ge=0, le=10)
    """First delay (seconds) once the free attempts are used; it doubles with each failure."""

    max_delay: float = Field(default=4.0, ge=0, le=30)
    """Longest delay (seconds) before an answer."""

    lockout_after: int = Field(default=10, ge=1, le=10_000)
    """Failures per account within ``window`` after which sign-in answers 429 until it passes."""

    window: float = Field(default=900.0, ge=10, le=86400)
    """Seconds over which failures are counted."""

    ip_factor: int = Field(default=5, ge=1, le=1000)
    """A client address may fail ``ip_factor`` times as often as one account."""


class ClientAuthThrottleSettings(Section):
    """Limits on failed client authentication at ``/token``, ``/introspect``, ``/revoke`` and
    ``/revocations`` (RFC 6749 §10.10: the server "MUST prevent attackers from guessing ...
    client credentials"), counted in the fast-state store, so they hold for every worker and
    every process sharing it.

    Each attempt is counted before its secret is checked, through three gates in turn: the
    client id from this address, this address across client ids, this client id from every
    address. An attempt over a gate's limit is answered 429 ``temporarily_unavailable`` with
    ``Retry-After`` (the seconds left in that gate's window) and counts nowhere. A successful
    authentication takes back only its own attempt at each gate; the failures before it stay
    counted until their window ends. Addresses are the socket peer, or
    the client named by ``X-Forwarded-For`` behind ``trusted_proxies``; IPv6 by /64."""

    enabled: bool = True
    """Count failures and refuse over the limits. DANGEROUS when false: client secrets can then
    be guessed as fast as the server answers."""

    window: float = Field(default=900.0, ge=10, le=86400)
    """Seconds over which a gate counts attempts; the window starts at the first one."""

    per_client_address: int = Field(default=50, ge=1, le=1_000_000)
    """Failed authentications of one client id from one address per window. Attempts in flight
    count until they are decided, so this also caps how many authentications of one client from
    one address run at once: more wait for room (up to a second), then get 429 with
    ``Retry-After: 1``. Keep it above the concurrent requests one client sends from one
    address."""

    per_address: int = Field(default=250, ge=1, le=1_000_000)
    """Failed authentications from one address per window, whatever the client id (one address
    trying many client ids)."""

    per_client: int = Field(default=500, ge=1, le=1_000_000)
    """Failed authentications of one client id per window, from every address (guessing spread
    over many addresses). Over it, the client is refused from everywhere until the window
    ends, so keep it well above ``per_client_address``: one address alone cannot reach it."""


class ClientRateLimitSettings(Section):
    """The request rate of each authenticated client at ``/introspect``, ``/revoke`` and
    ``/revocations`` (one bucket per client for the three), decided with GCRA on the rate-limit
    buckets of the fast-state store (a SQLite file, or Redis), shared by every worker.

    Over any ``t`` seconds a client is served at most ``burst + t × requests / per`` requests;
    more are answered 429 ``temporarily_unavailable`` with ``Retry-After``. A public client
    (revoking its own token) is counted per client id and address. Checked after the client has
    authenticated, so nobody can spend another client's rate."""

    enabled: bool = True
    """Limit the request rate of each client."""

    requests: int = Field(default=100, ge=1, le=1_000_000_000)
    """Requests per ``per`` seconds."""

    per: float = Field(default=1.0, gt=0, le=86400)
    """The period, in seconds."""

    burst: int = Field(default=200, ge=1, le=1_000_000_000)
    """Most requests served at once after an idle period."""


class AuthorizationServerSettings(Section):
    """The OAuth 2.1 / OpenID Connect authorization server."""

    enabled: bool = True
    """Serve the authorization server in ``bastion serve``."""

    listen: str = "127.0.0.1:8000"
    """Address to listen on (HOST:PORT)."""

    admin_listen: str | None = None
    """HOST:PORT of the admin API (``docs/admin-api.md``), apart from the public endpoints.
    Every request needs an access token of this server with the ``bastion:admin`` scope. Plain
    HTTP, so only a loopback address is accepted unless ``insecure_admin_listen`` is set. Unset:
    ``127.0.0.1`` on the port after ``listen``'s (``127.0.0.1:8001`` with the default
    ``listen``). Empty: no admin API."""

    insecure_admin_listen: bool = False
    """DANGEROUS: allow ``admin_listen`` on a non-loopback address. The admin API speaks plain
    HTTP: its bearer tokens cross the network in the clear unless TLS is terminated in front of
    it on a network only operators reach. ``bastion serve`` logs a warning at every start."""

    issuer: str = "http://127.0.0.1:8000"
    """The issuer identifier (RFC 8414 §2): an https URL without query or fragment. Plain http is
    accepted only for loopback hosts."""

    access_token_ttl: int = Field(default=900, ge=30, le=86400)
    """Access-token lifetime in seconds (default 15 minutes)."""

    access_token_algorithm: SigningAlgorithm = "ES256"
    """Signature algorithm of JWT access tokens."""

    id_token_algorithm: SigningAlgorithm = "RS256"
    """Signature algorithm of OpenID Connect ID tokens (RS256 is OIDC's mandatory one)."""

    id_token_ttl: int = Field(default=3600, ge=60, le=86400)
    """ID-token lifetime in seconds."""

    key_rotation_days: float = Field(default=30.0, gt=0)
    """Age after which a signing key is rotated automatically."""

    jwks_max_age: int = Field(default=600, ge=0, le=86400)
    """``Cache-Control: max-age`` of ``/jwks.json`` in seconds."""

    key_publish_delay: int | None = Field(default=None, ge=0)
    """Seconds a new key is published before it signs. Default: ``jwks_max_age``, so every cache
    holds the new key before a token needs it."""

    code_ttl: int = Field(default=60, ge=10, le=600)
    """Authorization-code lifetime in seconds."""

    refresh_token_idle_ttl: int = Field(default=14 * 86400, ge=60)
    """A refresh-token family dies when unused this long (seconds)."""

    refresh_token_absolute_ttl: int = Field(default=30 * 86400, ge=60)
    """A refresh-token family dies this long after sign-in, however used (seconds)."""

    insecure_refresh_reuse_window: int = Field(default=0, ge=0, le=300)
    """DANGEROUS: seconds after a refresh token is rotated during which presenting it again is
    answered with the same successor pair instead of counting as theft. It weakens reuse
    detection (RFC 9700 §4.14.2, OAuth 2.1 §4.3.1): a stolen refresh token replayed within the
    window gets the legitimate client's new access and refresh tokens, and its family is not
    revoked. Default 0: any presentation of a rotated token is refused with ``invalid_grant`` and
    revokes the family with its access tokens. Set it (a few seconds) only for clients that cannot
    avoid concurrent refreshes or retries of one token."""

    login_session_ttl: int = Field(default=8 * 3600, ge=60)
    """Lifetime of the authorization server's login session cookie (seconds)."""

    client_cache_ttl: float = Field(default=2.0, ge=0, le=60)
    """Seconds a process may serve a client record from memory; bounds how long a disabled
    client or rotated secret keeps working on other processes."""

    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest request body accepted by the token, introspection and revocation endpoints."""

    login_throttle: LoginThrottleSettings = LoginThrottleSettings()
    """Throttling of the login form."""

    client_auth_throttle: ClientAuthThrottleSettings = ClientAuthThrottleSettings()
    """Limits on failed client authentication."""

    client_rate_limit: ClientRateLimitSettings = ClientRateLimitSettings()
    """The request rate of each client at introspection and revocation."""

    trusted_proxies: tuple[str, ...] = ()
    """Networks (CIDR) of reverse proxies whose ``X-Forwarded-For`` names the client address
    (used by login throttling and the client-authentication limits). Empty: the socket peer is
    the client."""

    allow_insecure_http_issuer: bool = False
    """DANGEROUS: allow an http issuer on a non-loopback host (RFC 9700 requires TLS)."""

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        return _listen(value)

    @field_validator("admin_listen")
    @classmethod
    def _check_admin_listen(cls, value: str | None) -> str | None:
        return value if not value else _listen(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from bastion.net import parse_networks

        parse_networks(value)
        return value

    @field_validator("issuer")
    @classmethod
    def _check_issuer(cls, value: str) -> str:
        if "?" in value or "#" in value or not value.startswith(("http://", "https://")):
            raise ValueError("the issuer must be an http(s) URL without query or fragment")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_tls(self) -> AuthorizationServerSettings:
        from urllib.parse import urlsplit

        from bastion.net import is_loopback_host

        loopback = is_loopback_host(urlsplit(self.issuer).hostname or "")
        if self.issuer.startswith("http://") and not loopback and not self.allow_insecure_http_issuer:
            raise ValueError(
                "issuer: http is allowed only on loopback hosts; use https, or set "
                "allow_insecure_http_issuer = true if TLS is terminated in front of Bastion"
            )
        if self.admin_listen is None and self.listen.endswith(":65535"):
            raise ValueError("admin_listen: set it (or empty) when listen uses port 65535")
        admin = self.admin_address
        if admin and not is_loopback_host(admin.rpartition(":")[0]) and not self.insecure_admin_listen:
            raise ValueError(
                f"admin_listen: {admin} is not a loopback address; the admin API speaks "
                "plain HTTP, so keep it on 127.0.0.1 (and reach it through SSH or a TLS proxy), or "
                "set insecure_admin_listen = true if TLS is terminated in front of it"
            )
        if self.refresh_token_idle_ttl > self.refresh_token_absolute_ttl:
            raise ValueError("refresh_token_idle_ttl must not exceed refresh_token_absolute_ttl")
        return self

    @property
    def admin_address(self) -> str | None:
        """The admin API's ``HOST:PORT`` (see :attr:`admin_listen`), ``None`` for none."""
        if self.admin_listen is not None:
            return self.admin_listen or None
        port = int(self.listen.rpartition(":")[2])
        return f"127.0.0.1:{port + 1 if port else 0}"

    @property
    def publish_delay(self) -> int:
        """The effective key publish delay in seconds."""
        return self.jwks_max_age if self.key_publish_delay is None else self.key_publish_delay

    @property
    def secure_cookies(self) -> bool:
        """Whether cookies get ``Secure`` and the ``__Host-`` prefix (an https issuer)."""
        return self.issuer.startswith("https://")


class BFFSettings(Section):
    """The backend-for-frontend: holds the browser's tokens server-side behind one session cookie.

    The BFF is a confidential OAuth client of ``issuer``; its client secret is read from
    ``client_secret_env`` or ``client_secret_file`` by the CLI, never from this file.
    """

    listen: str = "127.0.0.1:8300"
    """``HOST:PORT`` the BFF listens on."""

    issuer: str = "http://127.0.0.1:8000"
    """The authorization server (its metadata is discovered from here)."""

    client_id: str = "bff"
    """The BFF's client id at the authorization server (a confidential client)."""

    client_secret_env: str | None = None
    """Name of the environment variable holding the client secret (resolved by the CLI)."""

    client_secret_file: str | None = None
    """Path of a file holding the client secret (resolved by the CLI)."""

    redirect_uri: str = "http://127.0.0.1:8300/bff/callback"
    """The BFF's callback URL, registered at the authorization server. Its origin is the BFF's
    public origin: ``https`` gives ``__Host-`` ``Secure`` cookies; plain ``http`` is accepted
    only on a loopback host (a demo), where the prefix and ``Secure`` are dropped with a
    warning."""

    gateway_url: str = "http://127.0.0.1:8080"
    """Where ``/bff/api/*`` is forwarded, with the session's access token."""

    scopes: tuple[str, ...] = ("openid", "profile", "email", "offline_access")
    """Scopes requested at sign-in (``openid`` is needed for the ID token's nonce check)."""

    idle_timeout: int = Field(default=1800, ge=60, le=86400)
    """Seconds a session survives without a request."""

    absolute_timeout: int = Field(default=12 * 3600, ge=60, le=30 * 86400)
    """Seconds a session survives at most since sign-in."""

    login_timeout: int = Field(default=600, ge=30, le=3600)
    """Seconds the pre-login cookie (state, nonce, PKCE verifier) stays valid."""

    refresh_margin: int = Field(default=30, ge=0, le=3600)
    """The access token is refreshed this many seconds before it expires."""

    allowed_origins: tuple[str, ...] = ()
    """Origins allowed to send unsafe requests (besides the ``redirect_uri``'s own origin)."""

    post_logout_redirect_uri: str | None = None
    """Where the authorization server sends the browser after RP-initiated logout (registered
    with the client); ``None`` leaves the user on the server's signed-out page."""

    anonymous_paths: tuple[str, ...] = ()
    """Paths under ``/bff/api/`` forwarded without a session, for ``GET`` and ``HEAD`` only and
    without any token (``"catalog/"``: a prefix ending in ``/``; otherwise the exact path); the
    gateway's route decides whether they need one. Empty: every API call needs a session."""

    static_dir: str | None = None
    """A directory of files (the single-page app) served at ``/`` with ``index.html`` for
    directories, under a strict ``Content-Security-Policy`` (scripts and styles from the BFF's
    own origin only, no framing). ``None`` serves nothing but ``/bff/*``."""

    @model_validator(mode="after")
    def _one_secret_source(self) -> BFFSettings:
        if (self.client_secret_env is None) == (self.client_secret_file is None):
            raise ValueError("set exactly one of client_secret_env or client_secret_file")
        _listen(self.listen)
        return self


class LoggingSettings(Section):
    """Where events go."""

    audit_log: str = ""
    """Audit trail (JSON lines). Empty: ``audit.log`` in the data dir; ``-`` for standard output.
    A file moved away (logrotate) is reopened at the next write. Every event is also stored in
    the database, searchable with ``bastion audit search`` (see ``docs/audit.md``)."""

    audit_retention_days: int = Field(default=90, ge=0, le=36500)
    """Days the database keeps audit events; older ones are pruned hourly. ``0`` keeps them for
    ever. (The file is not pruned: rotate it with logrotate.)"""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """Level of operational logs."""


class MetricsSettings(Section):
    """Prometheus metrics of ``bastion serve`` (see ``docs/metrics.md``)."""

    listen: str | None = None
    """``host:port`` of the server's one ``/metrics`` and ``/healthz`` listener, whatever
    ``--workers`` is: the supervisor merges its workers' metrics. Unset: ``gateway.admin_listen``
    when a ``[gateway]`` is configured (its default is ``127.0.0.1:9100``), else no listener.
    ``""`` turns it off. Keep it off the public network."""

    scrape_timeout: float = Field(default=3.0, gt=0, le=60)
    """Seconds the supervisor waits for each worker's metrics; a worker that does not answer
    in time counts with its last answer (``bastion_worker_up`` says so)."""

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        return value if not value else _listen(value)


AlertKind = Literal[
    "http_5xx_ratio", "auth_failures_per_address", "refresh_reuse", "signin_failures", "key_expiry"
]
AlertAction = Literal["event", "webhook", "ban", "open_circuit"]

#: The rule kinds whose alerts name a client address (``ban`` acts on it).
ADDRESS_KINDS = frozenset({"auth_failures_per_address"})


class AlertRuleSettings(Section):
    """One alert rule (``[[alerts.rules]]``): a condition on the counters of each gateway or
    authorization-server process, and what to do when it holds (see ``docs/alerts.md``)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", use_attribute_docstrings=True, populate_by_name=True
    )

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """The rule's name (letters, digits, ``_``, ``.``, ``-``): in every alert event, webhook and
    ``bastion alerts test NAME``."""

    kind: AlertKind
    """What is watched. ``http_5xx_ratio``: the share of 5xx answers of each gateway route (and
    authorization-server endpoint) over ``window``, at least ``threshold`` (``0.05``: 5 %) once
    ``min_requests`` were answered. ``auth_failures_per_address``: at least ``threshold``
    refused tokens (401) from one client address within ``window``, counted in the fast-state
    store across every gateway process (as ``[gateway.bans]`` counts; needs bans enabled).
    ``refresh_reuse``: at least ``threshold`` refresh tokens reused (families revoked) within
    ``window``. ``signin_failures``: at least ``threshold`` failed sign-ins within ``window``,
    overall, or from one address with ``per = "address"`` (counted in the fast-state store).
    ``key_expiry``: the seconds until a signing key must be rotated (the active key's remaining
    signing life less the publish delay; negative when rotation is overdue) fall below
    ``threshold``."""

    threshold: float
    """The value at which the rule holds (a ratio, a count, or seconds for ``key_expiry``)."""

    window: float = Field(default=300.0, gt=0, le=86400)
    """Seconds over which counts and ratios are taken."""

    min_requests: int = Field(default=20, ge=1, le=1_000_000_000)
    """``http_5xx_ratio``: fewer requests than this in ``window`` never fire (one failed request
    out of two is no outage)."""

    per: Literal["all", "address"] = "all"
    """``signin_failures``: count every failure together (``all``) or per client address
    (``address``, an IPv6 client by /64)."""

    hold: float = Field(default=0.0, ge=0, le=86400, alias="for")
    """(TOML key ``for``) Seconds the condition must hold at every evaluation before the alert
    fires; a blip shorter than this fires nothing."""

    cooldown: float = Field(default=300.0, gt=0, le=7 * 86400)
    """Seconds after a firing during which the same alert (rule and labels) does not fire again
    in any process sharing the fast-state store, even if it resolves and comes back."""

    actions: tuple[AlertAction, ...] = ("event",)
    """What a firing does. ``event``: the audit events ``alert.fired`` and ``alert.resolved``
    (always, listed or not); ``webhook``: POST a signed JSON message to ``webhook``; ``ban``:
    ban the offending address (address rules only) for ``duration`` in every gateway;
    ``open_circuit``: open the route's upstream circuit breaker for ``duration`` in every
    gateway process (``http_5xx_ratio`` only), so the route answers 503 meanwhile."""

    webhook: str | None = None
    """The name of the ``[alerts.webhooks.NAME]`` the ``webhook`` action posts to."""

    duration: float = Field(default=600.0, gt=0, le=365 * 86400)
    """Seconds a ``ban`` or an ``open_circuit`` lasts."""

    @model_validator(mode="after")
    def _consistent(self) -> AlertRuleSettings:
        where = f"alert rule {self.name!r}"
        if self.kind == "http_5xx_ratio" and not 0 < self.threshold <= 1:
            raise ValueError(f"{where}: an http_5xx_ratio threshold is a share between 0 and 1 (0.05: 5 %)")
        if self.kind not in ("http_5xx_ratio", "key_expiry") and self.threshold < 1:
            raise ValueError(f"{where}: a {self.kind} threshold is a count of at least 1")
        if "ban" in self.actions and not self.by_address:
            raise ValueError(
                f"{where}: the ban action needs a rule about one address "
                '(auth_failures_per_address, or signin_failures with per = "address")'
            )
        if "open_circuit" in self.actions and self.kind != "http_5xx_ratio":
            raise ValueError(f"{where}: the open_circuit action needs an http_5xx_ratio rule")
        if ("webhook" in self.actions) != (self.webhook is not None):
            raise ValueError(f"{where}: name a webhook with the webhook action (and only then)")
        return self

    @property
    def by_address(self) -> bool:
        """Whether the rule's alerts name a client address (counted in the fast-state store)."""
        return self.kind in ADDRESS_KINDS or (self.kind == "signin_failures" and self.per == "address")


class WebhookSettings(Section):
    """Where a ``webhook`` action posts (``[alerts.webhooks.NAME]``).

    Each message is JSON, signed with HMAC-SHA256 under the secret: the header
    ``X-Bastion-Signature: sha256=HEX`` signs ``TIMESTAMP.BODY``, with ``X-Bastion-Timestamp:
    TIMESTAMP`` (POSIX seconds). Failed attempts are retried with capped, jittered backoff. The
    secret comes from ``secret_env`` or ``secret_file``, never from this file."""

    url: str = Field(pattern=r"^https?://[^\s]+$")
    """The receiver's URL (``https://``; ``http://`` for a receiver on a trusted network)."""

    secret_env: str | None = None
    """Name of the environment variable holding the signing secret."""

    secret_file: str | None = None
    """Path of a file holding the signing secret."""

    timeout: float = Field(default=5.0, gt=0, le=60)
    """Seconds one attempt may take."""

    attempts: int = Field(default=5, ge=1, le=20)
    """Attempts per message (the first and its retries); each is an audit event."""

    backoff: float = Field(default=1.0, gt=0, le=600)
    """Seconds before the first retry; each further retry waits twice as long, jittered."""

    max_backoff: float = Field(default=60.0, gt=0, le=3600)
    """The longest wait between two attempts."""

    queue: int = Field(default=100, ge=1, le=100_000)
    """Messages waiting for delivery at most; a message beyond it is dropped (and audited)."""

    @model_validator(mode="after")
    def _one_secret_source(self) -> WebhookSettings:
        if (self.secret_env is None) == (self.secret_file is None):
            raise ValueError("set exactly one of secret_env or secret_file")
        return self


class AlertsSettings(Section):
    """Alert rules evaluated inside every gateway and authorization-server process (see
    ``docs/alerts.md``)."""

    interval: float = Field(default=10.0, ge=0.1, le=3600)
    """Seconds between two evaluations of the rules in each process."""

    rules: tuple[AlertRuleSettings, ...] = ()
    """The rules (``[[alerts.rules]]``)."""

    webhooks: dict[str, WebhookSettings] = {}
    """Webhook receivers by name (``[alerts.webhooks.NAME]``)."""

    @model_validator(mode="after")
    def _references(self) -> AlertsSettings:
        names = [rule.name for rule in self.rules]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"two alert rules are named {name!r}")
        for rule in self.rules:
            if rule.webhook is not None and rule.webhook not in self.webhooks:
                raise ValueError(f"alert rule {rule.name!r}: no [alerts.webhooks.{rule.webhook}]")
        return self

    def rule(self, name: str) -> AlertRuleSettings | None:
        """The rule called ``name``."""
        return next((rule for rule in self.rules if rule.name == name), None)


class Settings(Section):
    """The whole tree: ``bastion.toml`` maps onto it section by section."""

    data_dir: Path = Path(".bastion")
    """Directory for the embedded SQLite stores, the generated key-encryption key and the logs."""

    storage: StorageSettings = StorageSettings()
    authorization_server: AuthorizationServerSettings = AuthorizationServerSettings()
    gateway: GatewaySettings | None = None
    """The API gateway; started by ``bastion serve`` when this section is present."""

    bff: BFFSettings | None = None
    """The backend-for-frontend (see ``docs/bff.md``)."""

    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    alerts: AlertsSettings = AlertsSettings()
    """Alert rules and their actions (see ``docs/alerts.md``)."""

    @model_validator(mode="after")
    def _alerts_need_bans(self) -> Settings:
        if self.gateway is None or self.gateway.bans.enabled:
            return self
        for rule in self.alerts.rules:
            if rule.kind == "auth_failures_per_address" or "ban" in rule.actions:
                raise ValueError(
                    f"alert rule {rule.name!r} counts or bans client addresses: it needs "
                    "[gateway.bans] enabled = true"
                )
        return self

    def metrics_listener(self) -> tuple[str, str] | None:
        """The address of the server's metrics listener and the setting it comes from, or
        ``None`` when there is none (see :attr:`MetricsSettings.listen`)."""
        if self.metrics.listen is not None:
            return (self.metrics.listen, "metrics.listen") if self.metrics.listen else None
        if self.gateway is not None and self.gateway.admin_listen is not None:
            return self.gateway.admin_listen, "gateway.admin_listen"
        return None

    def resolved_database_url(self) -> str:
        """The durable store URL, defaulting to SQLite in the data dir."""
        return self.storage.database_url or f"sqlite:///{self.data_dir / 'bastion.db'}"

    def resolved_state_url(self) -> str:
        """The fast-state URL, defaulting to a SQLite file in the data dir."""
        return self.storage.state_url or f"sqlite:///{self.data_dir / 'state.db'}"

    def resolved_audit_log(self) -> str:
        """The audit log path (or ``-``)."""
        return self.logging.audit_log or str(self.data_dir / "audit.log")


def section_names() -> tuple[str, ...]:
    """The top-level keys a config file may hold."""
    return tuple(Settings.model_fields)


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The settings model inside an annotation (``X | None``, ``list[X]``, ``dict[str, X]``) and
    how its keys are written (``""``, ``"[]"``, ``".NAME"``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    origin = get_origin(annotation)
    args = [a for a in get_args(annotation) if a is not type(None) and a is not Ellipsis]
    if origin in (list, tuple) and args:
        inner, _ = _model_in(args[0])
        return inner, "[]"
    if origin is dict and len(args) == 2:
        inner, _ = _model_in(args[1])
        return inner, ".NAME"
    if len(args) == 1:
        return _model_in(args[0])
    return None, ""


class Option(NamedTuple):
    """One documented setting, as ``bastion config keys`` and ``docs/configuration.md`` show it."""

    key: str
    """Dotted key (``[]`` marks an array of tables, ``NAME`` a table of tables)."""
    default: Any
    """The default value; ``None`` when the setting is required or optional and unset."""
    description: str
    """The field's docstring."""
    required: bool = False
    """Whether the setting must be given (when its section is present)."""
    example: Any = None
    """For an optional setting that is unset by default: a value to show, commented out."""


#: Example values for optional settings that are unset by default (shown commented out).
_EXAMPLES: dict[str, Any] = {
    "authorization_server.key_publish_delay": 600,
    "gateway.tls_cert": "/etc/bastion/tls/fullchain.pem",
    "gateway.tls_key": "/etc/bastion/tls/privkey.pem",
    "gateway.issuers[].jwks_uri": "https://auth.example.com/jwks.json",
    "gateway.issuers[].audience": "https://api.example.com",
    "gateway.issuers[].introspection.client_secret_env": "GATEWAY_INTROSPECTION_SECRET",
    "gateway.issuers[].introspection.client_secret_file": "/run/secrets/introspection",
    "gateway.upstreams.NAME.health.path": "/healthz",
    "gateway.routes[].issuers": ["https://auth.example.com"],
    "gateway.routes[].audience": "https://api.example.com",
    "gateway.routes[].rewrite_prefix": "/",
    "alerts.rules[].webhook": "ops",
    "alerts.webhooks.NAME.secret_env": "BASTION_WEBHOOK_SECRET",
    "alerts.webhooks.NAME.secret_file": "/run/secrets/webhook",
}


def _example(key: str, annotation: Any) -> Any:
    if key in _EXAMPLES:
        return _EXAMPLES[key]
    args = [a for a in get_args(annotation) if a is not type(None)]
    inner = args[0] if len(args) == 1 else annotation
    if inner is int or inner is float:
        return 0
    if get_origin(inner) in (tuple, list):
        return []
    return ""


def describe(model: type[BaseModel] = Settings, prefix: str = "") -> list[Option]:
    """Every option of ``model``: key, default, description, whether required, an example."""
    rows: list[Option] = []
    for name, info in model.model_fields.items():
        inner, suffix = _model_in(info.annotation)
        if inner is not None:
            rows.extend(describe(inner, f"{prefix}{name}{suffix}."))
            continue
        key = f"{prefix}{info.alias or name}"
        description = (info.description or "").strip()
        if info.is_required():
            rows.append(Option(key, None, description, required=True))
            continue
        default = info.get_default(call_default_factory=True)
        example = _example(key, info.annotation) if default is None else None
        rows.append(Option(key, default, description, example=example))
    return rows
