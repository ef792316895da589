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
5. revocation: the local list, then the injected :class:`RevocationSource`;
6. the result is cached, unless something changed while we awaited (key left, jti revoked).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Collection
from types import TracebackType
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
from bastion.tokens._principal import Principal
from bastion.tokens._principal import principal_from_claims
from bastion.tokens._revocation import RevocationList
from bastion.tokens._revocation import RevocationSource
from bastion.tokens._rules import DEFAULT_ALGORITHMS
from bastion.tokens._rules import DEFAULT_MAX_TOKEN_BYTES
from bastion.tokens._rules import Rules
from bastion.tokens._rules import allowed_algorithms
from bastion.tokens._rules import check_claims
from bastion.tokens._rules import parse_token

DEFAULT_CACHE_SIZE: Final = 100_000
#: How long a locally revoked ``jti`` is remembered when its ``exp`` is not given.
DEFAULT_REVOCATION_TTL: Final = 86_400.0


class TokenValidator:
    """Validates JWT access tokens from one trusted issuer.

    Use one per issuer, as an async context manager or with :meth:`start` / :meth:`close`::

        async with TokenValidator("https://auth.example", audience="https://api.example") as v:
            principal = v.cached(token) or await v.validate(token)

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_audience",
        "_cache",
        "_clock",
        "_entries",
        "_keyset",
        "_owns_source",
        "_revocation",
        "_revoked",
        "_rules",
        "_source",
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
        leeway: Clock-skew allowance in seconds for ``exp``, ``nbf`` and ``iat``.
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
        self._keyset: KeySet | None = None
        self._clock = clock

    # -- the fast path ------------------------------------------------------------------------

    def cached(self, token: str, audience: str | None = None) -> Principal | None:
        """The principal of a token verified earlier and still unexpired, else ``None``.

        Synchronous and cheap (one dict lookup, one comparison): try it before awaiting
        :meth:`validate`. ``None`` means "not known here", never "invalid".
        """
        entry = self._entries.get((token, audience or self._audience))  # type: ignore[arg-type]
        if entry is not None and entry[1] > self._clock():
            return entry[0]
        return None

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
            return entry[0]

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
        if not jose.verify(alg, key.key, parsed.signing_input, parsed.signature):
            raise InvalidSignature(f"kid {kid!r}")

        now = self._clock()
        claims = check_claims(parsed.payload, rules, aud, now)
        principal = principal_from_claims(claims, issuer=self.issuer, audience=aud)
        jti = principal.token_id
        if jti is not None:
            await self._check_revocation(jti, now)
            if self._revoked.contains(jti, self._clock()):
                raise TokenRevoked(f"jti {jti[:64]!r} revoked while validating")
        current = self._keyset
        if principal.expires_at > now and current is not None and key.thumbprint in current.thumbprints:
            self._cache.put(token, aud, principal, key.thumbprint)
        return principal

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

    async def __aenter__(self) -> TokenValidator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
