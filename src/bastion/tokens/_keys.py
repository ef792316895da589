"""Verification keys, key sets, and where a validator gets them (the :class:`KeySource` seam).

A validator asks its key source for the issuer's current :class:`KeySet`. Two sources ship:
:class:`StaticKeys` for a process that holds the keys itself (the authorization server's own
introspection endpoint) and ``JWKSKeySource`` (``_jwks.py``), which fetches the issuer's JWKS
over HTTP. Keys never come from the token: ``jku``, ``x5u``, ``x5c`` and ``jwk`` headers are
ignored (RFC 8725 §3.10 warns against following them), only ``kid`` selects.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from typing import Protocol
from typing import runtime_checkable

from bastion.protocol import jose
from bastion.tokens._errors import UnknownKey


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key of an issuer.

    Attributes:
        key: The public key.
        kid: The JWK's ``kid`` (RFC 7517 §4.5), if any.
        alg: The JWK's own ``alg`` (RFC 7517 §4.4); when present the token's must equal it.
        thumbprint: RFC 7638 thumbprint; identifies the key material across refetches.
    """

    key: jose.PublicKey
    kid: str | None
    alg: str | None
    thumbprint: str

    @classmethod
    def from_key(
        cls, key: jose.PublicKey | jose.PrivateKey, kid: str | None = None, alg: str | None = None
    ) -> VerificationKey:
        """Wrap a ``cryptography`` key (a private key contributes its public half only)."""
        public_jwk = jose.public_jwk(key)
        return cls(jose.load_public_jwk(public_jwk), kid, alg, jose.thumbprint(public_jwk))


def _usable(jwk: Any) -> VerificationKey | None:
    if not isinstance(jwk, dict):
        return None
    # RFC 7517 §4.2: "sig" (signature) versus "enc" (encryption); only "sig" verifies tokens.
    if "use" in jwk and jwk["use"] != "sig":
        return None
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    kid = jwk.get("kid")
    alg = jwk.get("alg")
    if (kid is not None and not isinstance(kid, str)) or (alg is not None and not isinstance(alg, str)):
        return None
    try:
        key = jose.load_public_jwk(jwk)
    except jose.JOSEError:
        return None  # unsupported type, weak RSA, private members: never used to verify
    return VerificationKey(key, kid, alg, jose.thumbprint(jose.public_jwk(key)))


class KeySet:
    """An issuer's usable signing keys, indexed by ``kid``. Immutable.

    .. versionadded:: 0.1
    """

    __slots__ = ("_by_kid", "keys", "thumbprints")

    def __init__(self, keys: Iterable[VerificationKey] = ()) -> None:
        self.keys: tuple[VerificationKey, ...] = tuple(keys)
        by_kid: dict[str, list[VerificationKey]] = {}
        for key in self.keys:
            if key.kid is not None:
                by_kid.setdefault(key.kid, []).append(key)
        self._by_kid = {kid: tuple(found) for kid, found in by_kid.items()}
        self.thumbprints = frozenset(key.thumbprint for key in self.keys)

    @classmethod
    def from_jwks(cls, jwks: Mapping[str, Any]) -> KeySet:
        """Parse a JWK Set document (RFC 7517 §5), skipping keys that cannot verify tokens.

        Skipped: ``use`` other than ``sig``, ``key_ops`` without ``verify``, unsupported key
        types and curves, RSA under 2048 bits, and any JWK carrying private members.
        """
        keys = jwks.get("keys")
        if not isinstance(keys, list):
            raise ValueError("a JWK Set has a keys array")
        return cls(key for key in map(_usable, keys) if key is not None)

    @classmethod
    def from_keys(cls, keys: Mapping[str, jose.PublicKey | jose.PrivateKey]) -> KeySet:
        """A key set from ``{kid: key}``; private keys contribute their public half."""
        return cls(VerificationKey.from_key(key, kid) for kid, key in keys.items())

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[VerificationKey]:
        return iter(self.keys)

    def with_kid(self, kid: str) -> tuple[VerificationKey, ...]:
        """The keys published under ``kid`` (normally one)."""
        return self._by_kid.get(kid, ())

    def select(self, kid: str | None, alg: str) -> VerificationKey | None:
        """The one key that may verify an ``alg`` token with this ``kid``.

        Returns:
            The key, or ``None`` when ``kid`` is not in the set (the caller may refetch).

        Raises:
            UnknownKey: no ``kid`` while the set holds several keys (``kid_required``), the
                key's type or own ``alg`` does not fit the token's ``alg`` (``key_mismatch``,
                RFC 8725 §3.1), or several keys fit (``ambiguous_kid``).
        """
        candidates: tuple[VerificationKey, ...]
        if kid is None:
            if len(self.keys) != 1:
                raise UnknownKey("kid is required: the issuer has several keys", reason="kid_required")
            candidates = self.keys
        else:
            candidates = self._by_kid.get(kid, ())
            if not candidates:
                return None
        fitting = [
            key
            for key in candidates
            if jose.key_fits_alg(key.key, alg) and (key.alg is None or key.alg == alg)
        ]
        if not fitting:
            raise UnknownKey(f"key {kid!r} does not fit alg {alg}", reason="key_mismatch")
        if len(fitting) > 1:
            raise UnknownKey(f"several keys fit kid {kid!r}", reason="ambiguous_kid")
        return fitting[0]


@runtime_checkable
class KeySource(Protocol):
    """Where a validator gets the issuer's keys.

    ``force=True`` means "a token named a ``kid`` I don't have": the source may look again
    (rate-limited as it sees fit); otherwise it answers from what it holds when it can.

    .. versionadded:: 0.1
    """

    async def get_keys(self, *, force: bool = False) -> KeySet:
        """The issuer's current keys.

        Raises:
            IssuerUnavailable: the source has no keys and cannot get any.
        """
        ...


class StaticKeys:
    """Keys held in-process, for a validator that needs no HTTP.

    The authorization server validates its own tokens this way; after rotating its signing
    keys it calls :meth:`replace`, and validators using this source notice on their next miss.

    .. versionadded:: 0.1
    """

    def __init__(self, keys: KeySet | Mapping[str, Any]) -> None:
        """Args:
        keys: A :class:`KeySet`, or a JWK Set document (``{"keys": [...]}``).
        """
        self._keys = self._coerce(keys)

    @staticmethod
    def _coerce(keys: KeySet | Mapping[str, Any]) -> KeySet:
        return keys if isinstance(keys, KeySet) else KeySet.from_jwks(keys)

    def replace(self, keys: KeySet | Mapping[str, Any]) -> None:
        """Swap in a new key set (rotation)."""
        self._keys = self._coerce(keys)

    async def get_keys(self, *, force: bool = False) -> KeySet:
        """The current keys; ``force`` changes nothing, there is nowhere else to look."""
        return self._keys
