"""One issuer's access tokens, whatever their form: JWTs and opaque tokens together."""

from __future__ import annotations

from bastion.tokens._introspection import Introspector
from bastion.tokens._lifecycle import AsyncResource
from bastion.tokens._principal import Principal
from bastion.tokens._validator import TokenValidator


class IssuerVerifier(AsyncResource):
    """Checks JWT access tokens with a :class:`TokenValidator` and opaque ones with an
    :class:`Introspector` (RFC 7662), under one revocation regime.

    Revocations pushed to it (:meth:`revoke`, :meth:`revoke_client`, by
    :meth:`FastStateRevocations.follow` or your own feed) reach both forms: an introspection
    answer still in the introspector's cache is refused as soon as its ``jti`` or its client is
    revoked, instead of living out the cache's TTL. Without an introspector, opaque tokens are
    refused as malformed JWTs::

        verifier = IssuerVerifier(TokenValidator(issuer, audience=aud, revocation=revocations),
                                  Introspector(issuer, client_id=..., client_secret=..., audience=aud))
        principal = await verifier.validate(token)

    .. versionadded:: 0.2
    """

    __slots__ = ("introspector", "validator")

    def __init__(self, validator: TokenValidator, introspector: Introspector | None = None) -> None:
        self.validator = validator
        self.introspector = introspector

    def _opaque(self, token: str) -> bool:
        return self.introspector is not None and token.count(".") != 2

    def cached(self, token: str, audience: str | None = None) -> Principal | None:
        """The principal of a token checked earlier and not revoked since, else ``None``."""
        if not self._opaque(token):
            return self.validator.cached(token, audience)
        if not self.validator.cache_trusted:
            return None  # the feed is down: validate() asks the revocation source too
        principal = self.introspector.cached(token, audience)  # type: ignore[union-attr]
        if principal is None or self.validator.refused_locally(principal):
            return None
        return principal

    async def validate(self, token: str, *, audience: str | None = None) -> Principal:
        """Validate a JWT locally, or introspect an opaque token and apply the validator's
        revocation checks to the answer.

        Raises:
            TokenError: the token is refused.
        """
        if not self._opaque(token):
            return await self.validator.validate(token, audience=audience)
        principal = await self.introspector.introspect(token, audience=audience)  # type: ignore[union-attr]
        await self.validator.check_principal(principal)  # the local lists, then the source
        return principal

    # -- what a revocation feed drives (FastStateRevocations.follow) ----------------------------

    @property
    def cache_trusted(self) -> bool:
        """Whether cached answers may be used without asking the revocation source."""
        return self.validator.cache_trusted

    @cache_trusted.setter
    def cache_trusted(self, trusted: bool) -> None:
        self.validator.cache_trusted = trusted

    def revoke(self, jti: str, exp: float | None = None) -> None:
        """Refuse the token with this ``jti``, in either form."""
        self.validator.revoke(jti, exp)

    def revoke_client(self, client_id: str, issued_before: float, until: float | None = None) -> None:
        """Refuse every token of ``client_id`` issued before ``issued_before``, in either form."""
        self.validator.revoke_client(client_id, issued_before, until)

    def clear_cache(self) -> None:
        """Forget verified JWTs (the introspector's answers are re-checked on every hit)."""
        self.validator.clear_cache()

    async def start(self) -> None:
        """Prefetch the issuer's keys."""
        await self.validator.start()

    async def close(self) -> None:
        """Close the validator and the introspector."""
        await self.validator.close()
        if self.introspector is not None:
            await self.introspector.close()
