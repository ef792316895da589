"""Storage contracts, one small protocol per aggregate, in protocol vocabulary.

Durable aggregates (clients, signing keys, opaque tokens and revocations, ...) are implemented
once with SQLAlchemy Core for SQLite and PostgreSQL (:mod:`bastion.storage.sql`). Short-lived
state (codes, throttles, replay caches, the revocation feed) lives behind :class:`FastState`,
implemented in memory, on a SQLite file and on Redis (:mod:`bastion.storage.fast`). Every
backend passes the same conformance suite (``tests/storage/``).

Durability rule: a method returns only after its write is committed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Protocol

from bastion.protocol.models import Client
from bastion.protocol.models import SigningKey
from bastion.protocol.models import StoredAccessToken


class StorageError(Exception):
    """A backend failed; the message is safe to log and names no secret."""


class Conflict(StorageError):
    """A record with the same identity already exists."""


class NotFound(StorageError):
    """No such record."""


class ClientStore(Protocol):
    """Registered OAuth clients."""

    async def create_client(self, client: Client) -> None:
        """Persist a new client. Raises :class:`Conflict` if the id is taken."""

    async def get_client(self, client_id: str) -> Client | None:
        """The client, or ``None``."""

    async def list_clients(self) -> Sequence[Client]:
        """Every client, ordered by creation."""

    async def update_client(self, client: Client) -> None:
        """Replace a client's record. Raises :class:`NotFound`."""

    async def delete_client(self, client_id: str) -> bool:
        """Delete a client; ``False`` if there was none."""

    async def disabled_clients(self, changed_after: float) -> Sequence[tuple[str, float]]:
        """``(client_id, updated_at)`` of every disabled client last changed after
        ``changed_after``: what the revocation list reports as disabled clients."""


class KeyStore(Protocol):
    """Signing keys: public records plus the encrypted private key."""

    async def add_key(self, key: SigningKey, encrypted_private_key: bytes) -> None:
        """Persist a key. Raises :class:`Conflict` if its ``kid`` or its ``(alg, generation)``
        already exists (another process rotated first)."""

    async def list_keys(self) -> Sequence[tuple[SigningKey, bytes]]:
        """Every key with its encrypted private key, oldest first."""

    async def revoke_key(self, kid: str, now: float) -> SigningKey | None:
        """Mark a key revoked at ``now`` and commit; a key revoked before keeps its first
        revocation time. Returns the record as stored, ``None`` if there is no such key."""

    async def delete_key(self, kid: str) -> bool:
        """Remove a key for good; ``False`` if there was none."""

    async def get_sealed_secret(self, name: str) -> bytes | None:
        """A secret stored sealed under the KEK (``secret-hash``), ``None`` if there is none."""

    async def reseal(
        self, reseal: Callable[[bytes, bytes], bytes], secrets: Mapping[str, bytes], now: float
    ) -> int:
        """Replace, in one transaction, every sealed blob (private keys, refresh responses) by
        ``reseal(blob, aad)`` and store ``secrets`` (name → sealed); returns how many blobs
        changed. If ``reseal`` raises, nothing changes and the exception propagates."""


class TokenStore(Protocol):
    """Opaque access tokens and the record of revoked JWT ids."""

    async def add_access_token(self, token: StoredAccessToken) -> None:
        """Persist an opaque access token's record (looked up by its hash)."""

    async def get_access_token(self, token_hash: str) -> StoredAccessToken | None:
        """The record, or ``None``."""

    async def revoke_access_token(self, token_hash: str, now: float) -> StoredAccessToken | None:
        """Mark an opaque token revoked; returns its record (``None`` if unknown)."""

    async def record_revoked_jti(self, jti: str, expires_at: float, now: float) -> None:
        """Remember that the JWT with ``jti`` is revoked until it expires anyway."""

    async def is_jti_revoked(self, jti: str) -> bool:
        """Whether ``jti`` was revoked (and has not expired since)."""

    async def revoked_jtis(self, now: float) -> Sequence[tuple[str, float]]:
        """Every revoked ``jti`` still remembered at ``now``, with the time it may be
        forgotten (its token's ``exp`` plus leeway): what a fast store or a gateway that lost
        the revocation feed catches up from."""

    async def revoked_jtis_since(self, revoked_after: float, now: float) -> Sequence[tuple[str, float]]:
        """Like :meth:`revoked_jtis`, only those revoked after ``revoked_after`` (by the
        ``now`` given to :meth:`record_revoked_jti`): an incremental poll of the list."""

    async def record_family_jti(self, jti: str, family_id: str, expires_at: float) -> None:
        """Remember that JWT ``jti`` was issued from refresh-token family ``family_id``."""

    async def family_tokens(self, family_id: str, now: float) -> list[tuple[str, float]]:
        """Unexpired ``(jti, expires_at)`` of every access token (JWT or opaque) of a family."""

    async def revoke_family_opaque_tokens(self, family_id: str, now: float) -> int:
        """Mark every opaque access token of a family revoked; returns how many."""

    async def purge_expired(self, now: float) -> int:
        """Delete expired tokens and revocation records; returns how many rows went."""


class FastState(Protocol):
    """Shared short-lived state with atomic operations and a TTL on every key.

    Keys are strings, values bytes; ``ttl`` is in seconds (floats allowed, always positive). A key
    is live until its expiry and absent from then on, to every operation alike. Every backend
    gives the results of the memory backend, the reference (``tests/storage/``, a stateful model
    test included).
    """

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` under ``key``, replacing what was there."""

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        """Store only if absent; ``True`` if stored (replay caches, locks)."""

    async def get(self, key: str) -> bytes | None:
        """The live value, or ``None``."""

    async def consume(self, key: str) -> bytes | None:
        """Atomically get and delete: of N concurrent callers exactly one gets the value."""

    async def delete(self, key: str) -> None:
        """Remove ``key`` if present."""

    async def incr(self, key: str, ttl: float, amount: int = 1) -> int:
        """Add ``amount`` to a counter and return the new value, atomically: of N concurrent
        callers each sees a different value. A new counter (absent or expired key) starts from 0
        and expires after ``ttl``; an existing counter keeps its expiry (Redis ``INCRBY`` then
        ``PEXPIRE NX``). The value reads back as ASCII decimal bytes.

        Raises:
            StorageError: the live value is not a canonical decimal 64-bit integer (``b"7"``,
                ``b"-3"``; not ``b"07"``, ``b"+7"``, ``b" 7"``) or the sum would overflow, as Redis
                refuses it; the value is left unchanged.
        """

    async def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires, or ``None`` if absent."""

    async def publish(self, channel: str, message: bytes) -> None:
        """Deliver ``message`` to the subscribers of ``channel`` in every process."""

    def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        """Messages published on ``channel`` from now on (at-most-once, in order per publisher)."""

    async def close(self) -> None:
        """Release connections and files."""
