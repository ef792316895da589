"""Secrets at rest: AES-GCM sealing and keyed hashes, under one key-encryption key (KEK).

The KEK comes from ``BASTION_KEK`` (any secret of at least 32 characters) or a 0600 file the
CLI creates in the data dir. Sub-keys are derived with HKDF-SHA256 per purpose, so the key that
seals private keys never hashes a client secret.

Rotating the KEK (``bastion kek rotate``) re-seals every sealed blob under the new KEK. The
secret-hash key cannot change with it (the secrets it hashed are not stored), so it is carried
over: the rotation stores it, sealed under the new KEK, and a :class:`Sealer` built after that
uses the stored one (``hash_key``) instead of deriving it. During the switch a sealer also opens
blobs sealed under ``previous`` KEKs (``BASTION_KEK_PREVIOUS``); it always seals under the
current one.

Client secrets, codes and refresh tokens carry 256 random bits, so a fast keyed hash
(HMAC-SHA256) is the right store: a slow password hash would only cap throughput (bcrypt on
client secrets bounds Hydra's client-credentials rate, ory/hydra#1477) without adding security.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MIN_KEK_LENGTH = 32
_VERSION = b"\x01"


class SealError(ValueError):
    """A sealed blob failed authentication: wrong KEK, wrong context, or tampering."""


def derive(kek: bytes, purpose: str) -> bytes:
    """A 32-byte sub-key of ``kek`` for ``purpose`` (HKDF-SHA256, RFC 5869)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"bastion/" + purpose.encode()).derive(
        kek
    )


def new_secret(nbytes: int = 32) -> str:
    """A URL-safe random secret (256 bits by default)."""
    return secrets.token_urlsafe(nbytes)


class Sealer:
    """Encrypts and authenticates blobs (private keys, grace-window responses) and hashes secrets."""

    def __init__(self, kek: bytes, *, previous: Sequence[bytes] = (), hash_key: bytes | None = None) -> None:
        """A sealer under ``kek``, opening blobs sealed under ``previous`` KEKs too.

        Args:
            kek: The key-encryption key; everything is sealed under it.
            previous: Older KEKs whose blobs this sealer still opens (during a KEK rotation).
            hash_key: The carried secret-hash key (after a KEK rotation); by default it is derived
                from ``kek``.
        """
        for key in (kek, *previous):
            if len(key) < MIN_KEK_LENGTH:
                raise ValueError(f"the key-encryption key must be at least {MIN_KEK_LENGTH} bytes")
        self._aead = AESGCM(derive(kek, "seal"))
        self._openers = (self._aead, *(AESGCM(derive(old, "seal")) for old in previous))
        self._hash_key = derive(kek, "secret-hash") if hash_key is None else hash_key

    @property
    def hash_key(self) -> bytes:
        """The key of :meth:`hash_secret` (what a KEK rotation carries over)."""
        return self._hash_key

    def seal(self, data: bytes, aad: bytes) -> bytes:
        """``version || nonce || ciphertext+tag``; ``aad`` binds the blob to its record."""
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, data, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """The plaintext of :meth:`seal`. Raises :class:`SealError` if it does not authenticate."""
        if len(blob) < 29 or blob[:1] != _VERSION:
            raise SealError("not a sealed blob")
        for aead in self._openers:
            try:
                return aead.decrypt(blob[1:13], blob[13:], aad)
            except InvalidTag:
                continue
        raise SealError("sealed blob does not authenticate (wrong KEK?)")

    def hash_secret(self, secret: str) -> str:
        """Keyed hash of a high-entropy secret, hex; what storage keeps instead of the secret."""
        return hmac.new(self._hash_key, secret.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    def verify_secret(self, secret: str, stored: str) -> bool:
        """Whether ``secret`` hashes to ``stored``, compared in constant time."""
        return hmac.compare_digest(self.hash_secret(secret), stored)
