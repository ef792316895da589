"""Registered clients: creation, secrets, authentication (throttled, see
:mod:`bastion.services.client_auth`) with a short in-memory cache."""

from __future__ import annotations

import dataclasses
import hmac
import re
import time
import uuid
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any

from bastion.ops.audit import AuditLog
from bastion.ops.audit_events import EventType
from bastion.ops.audit_events import current_request
from bastion.protocol.errors import InvalidClient
from bastion.protocol.models import Client
from bastion.protocol.models import GrantType
from bastion.protocol.models import TokenFormat
from bastion.protocol.rfc6749.client_auth import AuthMethod
from bastion.protocol.rfc6749.client_auth import ClientCredentials
from bastion.protocol.rfc6749.client_auth import extract_credentials
from bastion.services.client_auth import ClientAuthThrottle
from bastion.services.crypto import Sealer
from bastion.services.crypto import new_secret
from bastion.storage.protocols import ClientStore
from bastion.storage.protocols import NotFound

_DUMMY_HASH = "0" * 64
# RFC 6749 Appendix A.1: client-id = *VSCHAR, VSCHAR = %x20-7E. Anything else names no client
# and must not reach storage (PostgreSQL refuses NUL in text: a lookup would fail, not miss).
_CLIENT_ID_RE = re.compile(r"[\x20-\x7e]{1,255}")


#: Schemes a redirect URI may never have.
_FORBIDDEN_SCHEMES = frozenset({"javascript", "data", "vbscript", "file", "blob", "about"})


def _acting(client: Client) -> Client:
    """Name ``client``, just authenticated, as the actor of the request being served."""
    request = current_request()
    if request is not None:
        request.client = request.actor = client.client_id
    return client


def is_client_id(value: str) -> bool:
    """Whether ``value`` could be a client identifier (RFC 6749 Appendix A.1, at most 255)."""
    return _CLIENT_ID_RE.fullmatch(value) is not None


class ClientError(ValueError):
    """A client definition that cannot be registered; the message says what to fix."""


#: The longest a replaced secret keeps working after a rotation (30 days).
MAX_OVERLAP = 30 * 86400
#: What :meth:`ClientService.update` may change.
UPDATABLE = frozenset(
    {
        "name",
        "scopes",
        "redirect_uris",
        "post_logout_redirect_uris",
        "grant_types",
        "token_format",
        "audience",
        "first_party",
    }
)


def check_definition(
    public: bool, grants: frozenset[str], uris: tuple[str, ...], logout_uris: tuple[str, ...]
) -> None:
    """Raises :class:`ClientError` unless the grant types and redirect URIs fit together."""
    known = {g.value for g in GrantType}
    if unknown := sorted(grants - known):
        raise ClientError(
            f"unsupported grant type(s): {', '.join(unknown)} (supported: {', '.join(sorted(known))})"
        )
    if public and GrantType.CLIENT_CREDENTIALS in grants:
        raise ClientError("a public client cannot use client_credentials (it has no secret)")
    if GrantType.AUTHORIZATION_CODE in grants and not uris:
        raise ClientError("authorization_code clients need at least one --redirect-uri")
    for uri in (*uris, *logout_uris):
        if "#" in uri or (not uri.startswith(("https://", "http://")) and ":" not in uri):
            raise ClientError(f"invalid redirect URI {uri!r}: absolute URI without fragment required")
        # Private-use schemes serve native apps (RFC 8252 §7.1); these never name an app but
        # run script or read local files where a browser follows them.
        if uri.split(":", 1)[0].strip().lower() in _FORBIDDEN_SCHEMES:
            raise ClientError(f"invalid redirect URI {uri!r}: scheme not allowed")


def _described(client: Client, changed: Mapping[str, Any]) -> dict[str, Any]:
    """The new values of the changed fields, as audit details (JSON-ready)."""
    out: dict[str, Any] = {}
    for name in changed:
        value = getattr(client, name)
        if isinstance(value, frozenset):
            value = sorted(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, TokenFormat):
            value = value.value
        out[name] = value
    return out


class ClientService:
    """Creates and authenticates clients. Reads are served from memory for ``cache_ttl`` seconds."""

    def __init__(
        self,
        store: ClientStore,
        sealer: Sealer,
        *,
        cache_ttl: float = 2.0,
        clock: Callable[[], float] = time.time,
        throttle: ClientAuthThrottle | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self._store = store
        #: Where registrations, secret rotations, disables and deletions are audited.
        self.audit = audit
        #: Counts each authentication attempt before its secret is checked; ``None``: unlimited.
        self.throttle = throttle
        self._sealer = sealer
        self._ttl = cache_ttl
        self._clock = clock
        self._cache: dict[str, tuple[Client | None, float]] = {}
        #: Called with ``(client_id, when)`` after a client is disabled and the record written:
        #: the token service announces it so that validators refuse the client's tokens.
        self.on_disabled: list[Callable[[str, float], Awaitable[None]]] = []
        #: Called with the client id whenever this process creates, changes or deletes a client
        #: (what is derived from every client, such as the CORS origins, drops its copy).
        self.on_changed: list[Callable[[str], None]] = []

    async def get(self, client_id: str) -> Client | None:
        """The client record (possibly up to ``cache_ttl`` seconds old); ``None`` for an id that
        is not one (:func:`is_client_id`)."""
        if not is_client_id(client_id):
            return None
        now = self._clock()
        hit = self._cache.get(client_id)
        if hit is not None and hit[1] > now:
            return hit[0]
        client = await self._store.get_client(client_id)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[client_id] = (client, now + self._ttl)
        return client

    def forget(self, client_id: str) -> None:
        """Drop a cached record (after this process changed it)."""
        self._cache.pop(client_id, None)
        for changed in self.on_changed:
            changed(client_id)

    async def authenticate(
        self,
        params: Mapping[str, str],
        authorization: str | None,
        *,
        ip: str,
        allow_public: bool = False,
    ) -> Client:
        """The authenticated client of a request from ``ip`` (RFC 6749 §2.3).

        Confidential clients must prove their secret; public clients are accepted (identified, not
        authenticated) only where ``allow_public``. With a :attr:`throttle`, the attempt is counted
        before anything about the client is looked at; a failure stays counted, a success gives
        its attempt back.

        Raises:
            InvalidClient: unknown, disabled, wrong secret, or a public client where not allowed.
            InvalidRequest: more than one authentication method.
            SlowDown: too many failures for this client or address (HTTP 429); nothing checked.
        """
        creds = extract_credentials(params, authorization)
        # The record is looked up before the attempt is counted (it holds no answer to a guess):
        # the span between count and give-back then waits on nothing but the fast-state store,
        # so a client's own concurrent requests hold few counts at once.
        client = await self.get(creds.client_id)
        throttle = self.throttle
        if throttle is None:
            return _acting(self._check(creds, client, allow_public))
        attempt = await throttle.attempt(creds.client_id, ip)
        try:
            checked = self._check(creds, client, allow_public)
        except InvalidClient:
            await throttle.failed(attempt)  # stays counted: the failure the limits are about
            raise
        await throttle.give_back(attempt)
        return _acting(checked)

    def _check(self, creds: ClientCredentials, client: Client | None, allow_public: bool) -> Client:
        used_basic = creds.method is AuthMethod.BASIC
        if client is None or client.disabled:
            # Same work as a real check, so timing does not reveal which ids exist.
            self._sealer.verify_secret(creds.secret or "", _DUMMY_HASH)
            raise InvalidClient(
                "client authentication failed", detail="unknown or disabled client", used_basic=used_basic
            )
        if client.public:
            if creds.secret is not None:
                raise InvalidClient("public clients have no secret", used_basic=used_basic)
            if not allow_public:
                raise InvalidClient("this endpoint requires client authentication", used_basic=used_basic)
            return client
        if creds.secret is None or client.secret_hash is None:
            raise InvalidClient("client authentication is required", used_basic=used_basic)
        if not self._secret_matches(client, creds.secret):
            raise InvalidClient("client authentication failed", detail="wrong secret", used_basic=used_basic)
        return client

    def _secret_matches(self, client: Client, secret: str) -> bool:
        """Whether ``secret`` is the client's secret, or its previous one within the overlap.

        Each comparison is constant-time (``hmac.compare_digest``), and while an overlap runs
        both are made, without a short cut, so the time taken never tells which one matched.
        """
        current = self._sealer.verify_secret(secret, client.secret_hash or _DUMMY_HASH)
        previous = client.previous_secret_hash
        expires = client.previous_secret_expires_at
        if previous is None or expires is None or self._clock() >= expires:
            return current
        return hmac.compare_digest(self._sealer.hash_secret(secret), previous) | current

    async def create(
        self,
        *,
        name: str,
        public: bool = False,
        grant_types: Iterable[str] = (GrantType.CLIENT_CREDENTIALS,),
        scopes: Iterable[str] = (),
        redirect_uris: Iterable[str] = (),
        post_logout_redirect_uris: Iterable[str] = (),
        audience: str | None = None,
        token_format: TokenFormat = TokenFormat.JWT,
        first_party: bool = False,
        client_id: str | None = None,
    ) -> tuple[Client, str | None]:
        """Register a client; returns it and its secret (shown once; ``None`` for public clients).

        Raises:
            ClientError: the definition breaks a rule (public client with client_credentials,
                authorization_code without redirect URIs, unknown grant type ...).
        """
        grants = frozenset(str(g) for g in grant_types)
        if client_id is not None and not is_client_id(client_id):
            raise ClientError("a client id is 1-255 printable ASCII characters (RFC 6749 Appendix A.1)")
        uris = tuple(redirect_uris)
        check_definition(public, grants, uris, tuple(post_logout_redirect_uris))
        now = self._clock()
        secret = None if public else new_secret(32)
        client = Client(
            client_id=client_id or str(uuid.uuid4()),
            name=name,
            public=public,
            grant_types=grants,
            scopes=frozenset(scopes),
            redirect_uris=uris,
            post_logout_redirect_uris=tuple(post_logout_redirect_uris),
            audience=audience,
            token_format=token_format,
            first_party=first_party,
            secret_hash=self._sealer.hash_secret(secret) if secret else None,
            created_at=now,
            updated_at=now,
        )
        await self._store.create_client(client)
        self.forget(client.client_id)  # a cached "no such client" must not outlive the creation
        self._emit(
            "client.created",
            client,
            {
                "name": client.name,
                "public": client.public,
                "grant_types": sorted(client.grant_types),
                "scopes": sorted(client.scopes),
                "redirect_uris": list(client.redirect_uris),
                "token_format": client.token_format.value,
                "first_party": client.first_party,
            },
        )
        return client, secret

    async def _require(self, client_id: str) -> Client:
        client = await self._store.get_client(client_id)
        if client is None:
            raise NotFound(f"no client {client_id!r}")
        return client

    async def rotate_secret(self, client_id: str, overlap: float = 0.0) -> tuple[Client, str]:
        """Replace a confidential client's secret and return the new one (shown once).

        With ``overlap`` seconds, the replaced secret keeps working that long beside the new
        one, so the client's deployments can switch without an outage; with none, it stops
        working at once here and within ``cache_ttl`` on other processes. A secret still in
        its overlap when another rotation comes is dropped: only the one replaced now survives.

        Raises:
            NotFound: no such client.
            ClientError: a public client, or ``overlap`` outside 0 to :data:`MAX_OVERLAP`.
        """
        if not 0 <= overlap <= MAX_OVERLAP:
            raise ClientError(f"the overlap is 0 to {MAX_OVERLAP} seconds (30 days)")
        client = await self._require(client_id)
        if client.public:
            raise ClientError("public clients have no secret")
        now = self._clock()
        secret = new_secret(32)
        updated = dataclasses.replace(
            client,
            secret_hash=self._sealer.hash_secret(secret),
            previous_secret_hash=client.secret_hash if overlap else None,
            previous_secret_expires_at=now + overlap if overlap else None,
            updated_at=now,
        )
        await self._store.update_client(updated)
        self.forget(client_id)
        details = {"overlap": overlap, "previous_valid_until": updated.previous_secret_expires_at}
        self._emit("client.secret_rotated", updated, details)
        return updated, secret

    async def update(self, client_id: str, **changes: Any) -> Client:
        """Change a client's registration: any of ``name``, ``scopes``, ``redirect_uris``,
        ``post_logout_redirect_uris``, ``grant_types``, ``token_format``, ``audience`` and
        ``first_party`` (omitted ones stay). The same rules as :meth:`create` apply to the result.

        Raises:
            NotFound: no such client.
            ClientError: an unknown field, or the result breaks a rule.
        """
        if unknown := sorted(set(changes) - UPDATABLE):
            raise ClientError(
                f"cannot change {', '.join(unknown)} (changeable: {', '.join(sorted(UPDATABLE))})"
            )
        client = await self._require(client_id)
        values: dict[str, Any] = {}
        for name, value in changes.items():
            if name in ("scopes", "grant_types"):
                value = frozenset(str(v) for v in value)
            elif name in ("redirect_uris", "post_logout_redirect_uris"):
                value = tuple(value)
            elif name == "token_format":
                value = TokenFormat(value)
            elif name == "name" and not str(value).strip():
                raise ClientError("a client's name cannot be empty")
            if getattr(client, name) != value:
                values[name] = value
        if not values:
            return client
        updated = dataclasses.replace(client, **values, updated_at=self._clock())
        check_definition(
            updated.public, updated.grant_types, updated.redirect_uris, updated.post_logout_redirect_uris
        )
        await self._store.update_client(updated)
        self.forget(client_id)
        self._emit("client.updated", updated, {"changed": sorted(values), **_described(updated, values)})
        return updated

    async def set_disabled(self, client_id: str, disabled: bool = True) -> Client:
        """Disable (or re-enable) a client.

        Disabling is recorded durably first (the record's ``disabled`` and ``updated_at``, what
        followers catch up from), then announced through :attr:`on_disabled`, so gateways and
        services refuse the tokens it holds, not only new requests.
        """
        client = await self._require(client_id)
        now = self._clock()
        updated = dataclasses.replace(client, disabled=disabled, updated_at=now)
        await self._store.update_client(updated)
        self.forget(client_id)
        self._emit("client.disabled" if disabled else "client.enabled", updated)
        if disabled:
            for announce in self.on_disabled:
                await announce(client_id, now)
        return updated

    async def disabled(self) -> list[tuple[str, float]]:
        """Every disabled client with the time it was last changed (at or after its disable,
        so every token issued before the disable was issued before it)."""
        return [(c.client_id, c.updated_at) for c in await self._store.list_clients() if c.disabled]

    async def delete(self, client_id: str) -> bool:
        """Delete a client record."""
        self.forget(client_id)
        deleted = await self._store.delete_client(client_id)
        self.forget(client_id)  # and whatever was read while the delete ran
        if deleted and self.audit is not None:
            self.audit.emit("client.deleted", subject=client_id, client=client_id)
        return deleted

    def _emit(self, type: EventType, client: Client, details: dict[str, Any] | None = None) -> None:
        if self.audit is not None:
            self.audit.emit(type, subject=client.client_id, client=client.client_id, details=details)

    async def list(self) -> list[Client]:
        """Every client."""
        return list(await self._store.list_clients())
