"""``TokenValidator``: JWT access tokens (RFC 9068) from one trusted issuer.

The order of checks on a cache miss, and why:

1. size, syntax, ``crit``, ``alg`` allowlist, ``typ`` (``_rules.parse_token``): cheap, no key;
2. key selection by ``kid`` from the issuer's keys (``KeySet.select``), refetching at most once
   per cooldown when the ``kid`` is unknown; never from ``jku``/``x5u``/``x5c``/``jwk`` headers,
   which are ignored: a token carrying them is verified against the issuer's keys by ``kid``
   exactly like any other (so such a token from the real issuer still works, and one signed by
   a key it embeds fails with ``unknown_kid`` or ``bad_signature``);
3. the signature (``protocol.jose.verify``): nothing in the payload is trusted before this;
4. the claims (``_rules.check_claims``): ``iss``, ``aud``, ``exp``, ``nbf``, ``iat``, types;
5. revocation: the local lists (revoked ``jti`` values, disabled clients), then the injected
   :class:`RevocationSource`;
6. the result is cached, unless something changed while we awaited (key left, jti revoked).

Trusting the cache: a cache hit skips every check above, which is only safe while the
validator hears of every revocation (its feed is up). Whoever feeds it says when it cannot
(:attr:`TokenValidator.cache_trusted` set to ``False``): hits are then re-checked against the
revocation source, and a source that cannot answer refuses the token (``IssuerUnavailable``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Collection
from typing import Final

import aiohttp

from bastion.protocol import jose
from bastion.tokens._cache import VerifiedTokenCache
from bastion.tokens._errors import InvalidSignature
from bastion.tokens._errors import IssuerUnavailable
from bastion.tokens._errors import TokenError
from bastion.tokens._errors import TokenRevoked
from bastion.tokens._errors import UnknownKey
from bastion.tokens._http import DEFAULT_TIMEOUT
from bastion.tokens._jwks import DEFAULT_CACHE_TTL
from bastion.tokens._jwks import DEFAULT_REFETCH_COOLDOWN
from bastion.tokens._jwks import JWKSKeySource
from bastion.tokens._keys import KeySet
from bastion.tokens._keys import KeySource
from bastion.tokens._lifecycle import AsyncResource
from bastion.tokens._principal import Principal
from bastion.tokens._principal import issued_before as _issued_before
from bastion.tokens._principal import principal_from_claims
from bastion.tokens._revocation import ClientCutoffs
from bastion.tokens._revocation import ClientRevocationSource
from bastion.tokens._revocation import RevocationList
from bastion.tokens._revocation import RevocationSource
from bastion.tokens._rules import DEFAULT_ALGORITHMS
from bastion.tokens._rules import DEFAULT_MAX_TOKEN_BYTES
from bastion.tokens._rules import Rules
from bastion.tokens._rules import allowed_algorithms
from bastion.tokens._rules import check_claims
from bastion.tokens._rules import parse_token

DEFAULT_CACHE_SIZE: Final = 100_000
#: The largest clock-skew ``leeway`` a validator accepts. Issuers remember a revocation this long
#: after the token's ``exp``, so no validator can accept a revoked token the issuer forgot.
MAX_LEEWAY: Final = 300.0
#: How long a locally revoked ``jti`` is remembered when its ``exp`` is not given.
DEFAULT_REVOCATION_TTL: Final = 86_400.0


class TokenValidator(AsyncResource):
    """Validates JWT access tokens from one trusted issuer.

    Use one per issuer, as an async context manager or with :meth:`start` / :meth:`close`::

        async with TokenValidator("https://auth.example", audience="https://api.example") as v:
            principal = v.cached(token) or await v.validate(token)

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_audience",
        "_cache",
        "_clients",
        "_clock",
        "_entries",
        "_forgotten",
        "_keyset",
        "_owns_source",
        "_revocation",
        "_revoked",
        "_rules",
        "_source",
        "_trusted",
        "issuer",
    )

    def __init__(
        self,
        issuer: str,
        *,
        audience: str | None = None,
        jwks_uri: str | None = None,
        key_source: KeySource | None = None,
        algorithms: Collection[str] = DEFAULT_ALGORITHMS,
        leeway: float = 60.0,
        required_claims: Collection[str] = ("exp",),
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
        cache_size: int = DEFAULT_CACHE_SIZE,
        revocation: RevocationSource | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
        jwks_cache_ttl: float = DEFAULT_CACHE_TTL,
        refetch_cooldown: float = DEFAULT_REFETCH_COOLDOWN,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Args:
        issuer: The issuer identifier; ``iss`` must equal it exactly.
        audience: Default expected audience, when calls don't name one.
        jwks_uri: Where the JWKS lives; by default read from the issuer's RFC 8414 metadata
            (``/.well-known/oauth-authorization-server``, then ``openid-configuration``).
        key_source: Use these keys instead of fetching the JWKS (e.g. :class:`StaticKeys`).
        algorithms: Allowed ``alg`` values; never ``none`` or HMAC (``ValueError``).
        leeway: Clock-skew allowance in seconds for ``exp``, ``nbf`` and ``iat``; at most
            :data:`MAX_LEEWAY`.
        required_claims: Claims that must be present (``exp`` always is); see
            ``RFC9068_REQUIRED_CLAIMS``.
        max_token_bytes: Longer tokens are refused before parsing (default 8 KiB).
        cache_size: Bound of the verified-token cache (0 disables it).
        revocation: Consulted for every ``jti`` on a cache miss.
        session: aiohttp session to borrow for JWKS fetches; by default one is owned.
        timeout: Timeouts for JWKS and metadata requests.
        jwks_cache_ttl: Keys older than this are refreshed in the background (10 min).
        refetch_cooldown: At most one JWKS fetch per this many seconds (30 s).
        clock: Seconds since the epoch; injectable for tests.

        Raises:
            ValueError: inconsistent or unsafe settings.
        """
        if key_source is not None and jwks_uri is not None:
            raise ValueError("give either key_source or jwks_uri, not both")
        if leeway < 0 or max_token_bytes <= 0:
            raise ValueError("leeway must not be negative and max_token_bytes must be positive")
        if leeway > MAX_LEEWAY:
            raise ValueError(
                f"leeway must be at most {MAX_LEEWAY:g} s (MAX_LEEWAY): issuers forget "
                "revocations that long after exp"
            )
        self.issuer = issuer
        self._audience = audience
        self._rules = Rules(
            issuer=issuer,
            algorithms=allowed_algorithms(algorithms),
            leeway=leeway,
            max_token_bytes=max_token_bytes,
            required_claims=tuple(required_claims),
        )
        self._owns_source = key_source is None
        self._source: KeySource = key_source or JWKSKeySource(
            issuer,
            jwks_uri=jwks_uri,
            session=session,
            timeout=timeout,
            cache_ttl=jwks_cache_ttl,
            refetch_cooldown=refetch_cooldown,
            clock=clock,
        )
        self._cache = VerifiedTokenCache(cache_size)
        self._entries = self._cache.entries
        self._revocation = revocation
        self._revoked = RevocationList()
        self._clients = ClientCutoffs()
        #: kid -> thumbprints of keys revoked by the issuer, refused until a JWKS without them.
        self._forgotten: dict[str, frozenset[str]] = {}
        self._trusted = True
        self._keyset: KeySet | None = None
        self._clock = clock

    # -- the fast path ------------------------------------------------------------------------

    def cached(self, token: str, audience: str | None = None) -> Principal | None:
        """The principal of a token verified earlier and still unexpired, else ``None``.

        Synchronous and cheap (one dict lookup, one comparison): try it before awaiting
        :meth:`validate`. ``None`` means "not known here", never "invalid".
        """
        if not self._trusted:
            return None
        entry = self._entries.get((token, audience or self._audience))  # type: ignore[arg-type]
        if entry is not None and entry[1] > self._clock():
            return entry[0]
        return None

    @property
    def cache_trusted(self) -> bool:
        """Whether cache hits are answered without any check (the default).

        Set it to ``False`` while the feed that tells this validator of revocations is down:
        :meth:`cached` then answers ``None`` and :meth:`validate` re-checks every hit against
        the local lists and the revocation source (a source that cannot answer refuses the
        token with ``IssuerUnavailable``: fail closed). Set it back once the feed has caught up.

        .. versionadded:: 0.2
        """
        return self._trusted

    @cache_trusted.setter
    def cache_trusted(self, trusted: bool) -> None:
        self._trusted = trusted

    @property
    def known_kids(self) -> frozenset[str]:
        """The ``kid`` of every key in the key set this validator last used (empty before its
        first fetch): what ``bastion keys check --gateway`` compares with the issuer's JWKS.

        .. versionadded:: 0.3
        """
        keyset = self._keyset
        if keyset is None:
            return frozenset()
        return frozenset(key.kid for key in keyset.keys if key.kid is not None)

    # -- full validation ----------------------------------------------------------------------

    async def validate(self, token: str, *, audience: str | None = None) -> Principal:
        """Validate an access token and return whom it stands for.

        Args:
            token: The compact JWT from ``Authorization: Bearer``.
            audience: Expected audience; defaults to the validator's.

        Returns:
            The verified :class:`Principal`.

        Raises:
            TokenError: a subclass saying why (its ``reason`` is a metrics label).
            ValueError: no audience given here nor at construction.
        """
        aud = audience or self._audience
        if aud is None:
            raise ValueError("an audience is required")
        entry = self._entries.get((token, aud))
        if entry is not None and entry[1] > self._clock():
            if self._trusted:
                return entry[0]
            principal = entry[0]
            await self._check_principal(principal, self._clock())
            return principal

        rules = self._rules
        parsed = parse_token(token, rules)
        alg: str = parsed.header["alg"]
        kid: str | None = parsed.header.get("kid")
        keys = await self._keys(force=False)
        key = keys.select(kid, alg)
        if key is None:
            keys = await self._keys(force=True)
            key = keys.select(kid, alg)
            if key is None:
                raise UnknownKey(f"kid {kid[:64] if kid else kid!r} is not in the JWKS of {self.issuer}")
        if self._forgotten and self._is_forgotten(kid, key.thumbprint):
            # A JWKS served from a stale cache may still list a revoked key: look again once
            # (rate-limited by the source), and refuse while it is still there.
            keys = await self._keys(force=True)
            key = keys.select(kid, alg)
            if key is None or self._is_forgotten(kid, key.thumbprint):
                raise UnknownKey(f"kid {kid[:64] if kid else kid!r} was revoked", reason="key_revoked")
        if not jose.verify(alg, key.key, parsed.signing_input, parsed.signature):
            raise InvalidSignature(f"kid {kid!r}")

        now = self._clock()
        claims = check_claims(parsed.payload, rules, aud, now)
        principal = principal_from_claims(claims, issuer=self.issuer, audience=aud)
        await self._check_principal(principal, now)
        jti = principal.token_id
        if jti is not None and self._revoked.contains(jti, self._clock()):
            raise TokenRevoked(f"jti {jti[:64]!r} revoked while validating")
        current = self._keyset
        if (
            principal.expires_at > now
            and current is not None
            and key.thumbprint in current.thumbprints
            and not self._is_forgotten(kid, key.thumbprint)
            and not self._clients.refuses(principal, self._clock())
        ):
            self._cache.put(token, aud, principal, key.thumbprint)
        return principal

    def refused_locally(self, principal: Principal) -> bool:
        """Whether the local lists (revoked ``jti`` values, disabled clients) refuse
        ``principal``: a dict lookup, for principals validated elsewhere (an introspector's
        cached answer)."""
        now = self._clock()
        jti = principal.token_id
        return (jti is not None and self._revoked.contains(jti, now)) or self._clients.refuses(principal, now)

    async def check_principal(self, principal: Principal) -> None:
        """Apply every revocation check of this validator to ``principal`` (validated
        elsewhere: introspection): the local lists, then the revocation source.

        Raises:
            TokenRevoked: its ``jti`` or its client was revoked.
            IssuerUnavailable: the revocation source cannot answer.
        """
        await self._check_principal(principal, self._clock())

    async def _check_principal(self, principal: Principal, now: float) -> None:
        """Revocation checks of a verified token: its ``jti``, then its client."""
        if self._clients.refuses(principal, now):
            raise TokenRevoked(f"client {str(principal.client_id)[:64]!r} was disabled")
        jti = principal.token_id
        if jti is not None:
            await self._check_revocation(jti, now)
        if principal.client_id is not None and isinstance(self._revocation, ClientRevocationSource):
            try:
                before = await self._revocation.client_disabled_before(principal.client_id)
            except TokenError:
                raise
            except Exception as exc:
                raise IssuerUnavailable(
                    f"revocation source failed: {type(exc).__name__}", reason="revocation_unavailable"
                ) from exc
            if before is not None and _issued_before(principal, before):
                raise TokenRevoked(f"client {principal.client_id[:64]!r} was disabled")

    def _is_forgotten(self, kid: str | None, thumbprint: str) -> bool:
        if not self._forgotten:
            return False
        if kid is not None and kid in self._forgotten:
            return True
        return any(thumbprint in prints for prints in self._forgotten.values())

    async def _check_revocation(self, jti: str, now: float) -> None:
        if self._revoked.contains(jti, now):
            raise TokenRevoked(f"jti {jti[:64]!r}")
        if self._revocation is None:
            return
        try:
            revoked = await self._revocation.is_revoked(jti)
        except TokenError:
            raise
        except Exception as exc:
            # Fail closed: a token we cannot check is not accepted.
            raise IssuerUnavailable(
                f"revocation source failed: {type(exc).__name__}", reason="revocation_unavailable"
            ) from exc
        if revoked:
            raise TokenRevoked(f"jti {jti[:64]!r}")

    async def _keys(self, *, force: bool) -> KeySet:
        keys = await self._source.get_keys(force=force)
        if keys is not self._keyset:
            previous = self._keyset
            self._keyset = keys
            if previous is not None:
                self._cache.flush_keys(previous.thumbprints - keys.thumbprints)
            if self._forgotten:
                # A fetched key set without a revoked key ends its ban; one still listing it
                # (a stale cache) keeps it.
                for kid in list(self._forgotten):
                    prints = self._forgotten[kid]
                    if not keys.with_kid(kid) and not prints & keys.thumbprints:
                        del self._forgotten[kid]
        return keys

    # -- administration -----------------------------------------------------------------------

    def revoke(self, jti: str, exp: float | None = None) -> None:
        """Refuse the token with this ``jti`` from now on and drop it from the cache.

        Args:
            jti: The revoked token's id.
            exp: Its expiry, if known: the revocation is remembered until then (plus leeway);
                otherwise for ``DEFAULT_REVOCATION_TTL``.
        """
        now = self._clock()
        until = (exp if exp is not None else now + DEFAULT_REVOCATION_TTL) + self._rules.leeway
        self._revoked.add(jti, until, now)
        self._cache.flush_jti(jti)

    def revoke_client(self, client_id: str, issued_before: float, until: float | None = None) -> None:
        """Refuse every token of ``client_id`` issued before ``issued_before`` (a disabled
        client) and drop them from the cache.

        Args:
            client_id: The disabled client.
            issued_before: Tokens whose ``iat`` is earlier (or absent) are refused.
            until: When to forget this (when every such token has expired anyway, plus
                leeway); default ``DEFAULT_REVOCATION_TTL`` from now.

        .. versionadded:: 0.2
        """
        now = self._clock()
        self._clients.add(
            client_id, issued_before, until if until is not None else now + DEFAULT_REVOCATION_TTL
        )
        self._cache.flush_where(lambda principal: self._clients.refuses(principal, now))

    def forget_key(self, kid: str) -> int:
        """The issuer revoked the key ``kid``: stop trusting it now, without waiting for JWKS.

        The key leaves the key set this validator uses, every cached token it signed is
        dropped, and tokens naming it are refused (``UnknownKey``, reason ``key_revoked``) even
        if a stale JWKS still lists it, until a JWKS fetched afterwards no longer does.

        Returns:
            How many cached tokens were dropped.

        .. versionadded:: 0.2
        """
        current = self._keyset
        prints = (
            frozenset(key.thumbprint for key in current.with_kid(kid)) if current is not None else frozenset()
        )
        self._forgotten[kid] = self._forgotten.get(kid, frozenset()) | prints
        return self._cache.flush_keys(prints)

    async def refresh_keys(self) -> KeySet:
        """Ask the key source to look again (rate-limited by it); flushes removed keys."""
        return await self._keys(force=True)

    @property
    def cache_size(self) -> int:
        """How many verified tokens are cached."""
        return len(self._cache)

    def clear_cache(self) -> None:
        """Forget every verified token."""
        self._cache.clear()

    async def start(self) -> None:
        """Prefetch the issuer's keys.

        Raises:
            IssuerUnavailable: they cannot be fetched.
        """
        await self._keys(force=False)

    async def close(self) -> None:
        """Release the JWKS source this validator built (an injected ``key_source`` is the
        caller's to close)."""
        if self._owns_source and isinstance(self._source, JWKSKeySource):
            await self._source.close()
