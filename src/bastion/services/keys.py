"""Signing keys: generation, encryption at rest, rotation without a failed validation.

A key's state follows from times alone, so every process agrees without coordination:

* **pending** — published in JWKS, not yet signing (``now < activates_at``);
* **active** — the newest activated key of its algorithm: it signs;
* **retired** — a newer key of its algorithm is active; still published so that tokens it
  signed keep verifying;
* **expired** — retired for longer than the longest token lifetime: nothing it signed is
  valid any more, so it leaves JWKS.

Rotation creates the next generation with ``activates_at = now + publish_delay``; the publish
delay defaults to the JWKS ``max-age``, so every cache has seen the new key before a token
needs it. ``(alg, generation)`` is unique in storage, so two processes rotating at once cannot
both win.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bastion.ops.background import Background
from bastion.ops.feeds import Follower
from bastion.protocol import jose
from bastion.protocol.models import SigningKey
from bastion.services.crypto import Sealer
from bastion.services.crypto import SealError
from bastion.storage.protocols import Conflict
from bastion.storage.protocols import FastState
from bastion.storage.protocols import KeyStore
from bastion.storage.protocols import StorageError

#: Fast-state channel on which a process announces a key it created (the ``kid``).
KEYS_CHANNEL = "signing-keys"


class KeyState(StrEnum):
    """Where a key is in its lifecycle."""

    PENDING = "pending"
    ACTIVE = "active"
    RETIRED = "retired"
    EXPIRED = "expired"
    REVOKED = "revoked"


class NoSigningKey(RuntimeError):
    """No activated key exists for an algorithm (run ``bastion keys rotate``)."""


@dataclass(frozen=True, slots=True)
class ActiveKey:
    """A key ready to sign."""

    kid: str
    alg: str
    private_key: jose.PrivateKey


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """How keys rotate and how long retired keys stay published (all seconds)."""

    algorithms: tuple[str, ...]
    rotation_period: float
    publish_delay: float
    #: The longest lifetime of anything signed (tokens) plus validators' leeway.
    retention: float
    jwks_max_age: int


class KeyService:
    """Holds the decrypted keys of this process and answers signing and JWKS questions."""

    def __init__(
        self,
        store: KeyStore,
        sealer: Sealer,
        policy: KeyPolicy,
        *,
        clock: Callable[[], float] = time.time,
        refresh_interval: float = 10.0,
        state: FastState | None = None,
    ) -> None:
        self._store = store
        self._state = state
        self._sealer = sealer
        self.policy = policy
        self._clock = clock
        self._refresh_interval = refresh_interval
        self._keys: list[SigningKey] = []
        self._private: dict[str, jose.PrivateKey] = {}
        self._public: dict[str, jose.PublicKey] = {}
        self._refresher = Background(self.run)
        #: alg → (key, valid from, valid until): the signing key without a scan per token.
        self._signing: dict[str, tuple[ActiveKey, float, float]] = {}

    # -- loading -----------------------------------------------------------------------------

    async def load(self) -> None:
        """Read every key from storage and decrypt the private keys not seen before."""
        rows = await self._store.list_keys()
        for key, sealed in rows:
            if key.kid not in self._private:
                try:
                    pem = self._sealer.open(sealed, aad=key.kid.encode())
                except SealError:
                    raise SealError(
                        f"cannot decrypt signing key {key.kid}: the key-encryption key is not the one it was "
                        "encrypted with. Set BASTION_KEK (or BASTION_KEK_FILE) to the original key."
                    ) from None
                self._private[key.kid] = jose.private_key_from_pem(pem)
                self._public[key.kid] = jose.load_public_jwk(key.public_jwk)
        self._keys = [key for key, _ in rows]
        self._signing.clear()

    async def ensure(self) -> list[SigningKey]:
        """Create missing keys and rotate due ones (the automatic schedule); returns new keys."""
        now = self._clock()
        created = []
        for alg in self.policy.algorithms:
            keys = [k for k in self._keys if k.alg == alg and k.revoked_at is None]
            if not keys:
                created.append(await self.rotate(alg, publish_delay=0.0, generation=1))
                continue
            newest = max(keys, key=lambda k: k.generation)
            due = newest.activates_at + self.policy.rotation_period - self.policy.publish_delay
            if newest.activates_at <= now and due <= now:
                created.append(await self.rotate(alg, generation=newest.generation + 1))
        return created

    async def rotate(
        self, alg: str, *, publish_delay: float | None = None, generation: int | None = None
    ) -> SigningKey:
        """Create the next key for ``alg``; it signs ``publish_delay`` seconds after every process
        serves it.

        Other processes learn of the key from a message on :data:`KEYS_CHANNEL`, or at the latest
        on their next refresh, so a non-zero delay is counted from one refresh interval after
        now: JWKS caches then hold the key for the whole delay before a token needs it.

        With ``generation``, the key is created only if no process created that generation
        first; otherwise the existing one is returned (the automatic schedule uses this so that
        processes deciding at the same moment create one key between them).
        """
        if generation is None:
            await self.load()
            generation = 1 + max((k.generation for k in self._keys if k.alg == alg), default=0)
        now = self._clock()
        delay = self.policy.publish_delay if publish_delay is None else publish_delay
        if delay > 0:
            delay += self._refresh_interval
        private = jose.generate_private_key(alg)
        public = jose.public_jwk(private)
        kid = jose.thumbprint(public)[:16]
        key = SigningKey(
            kid=kid,
            alg=alg,
            public_jwk=public,
            created_at=now,
            activates_at=now + delay,
            generation=generation,
        )
        sealed = self._sealer.seal(jose.private_key_to_pem(private), aad=kid.encode())
        try:
            await self._store.add_key(key, sealed)
        except Conflict:
            await self.load()  # another process created this generation first: use its key
            return next(k for k in self._keys if k.alg == alg and k.generation == generation)
        await self.load()
        if self._state is not None:
            with contextlib.suppress(StorageError):  # the periodic refresh covers a lost message
                await self._state.publish(KEYS_CHANNEL, kid.encode())
        return key

    async def run(self) -> None:
        """Reload keys and apply the rotation schedule every ``refresh_interval`` seconds, and
        reload at once when another process announces a new key."""
        follower = None
        if self._state is not None:
            follower = asyncio.get_running_loop().create_task(self._follow(self._state))
        try:
            while True:
                await asyncio.sleep(self._refresh_interval)
                with contextlib.suppress(Exception):  # a store outage must not stop signing
                    await self.load()
                    await self.ensure()
        finally:
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError, StorageError):
                    await follower

    async def _follow(self, state: FastState) -> None:
        """Reload on every key announcement (created or revoked); after a lost subscription,
        reconnect with backoff and reload (catch up) before following again."""

        async def reload(_: bytes) -> None:
            await self.load()

        subscriptions = 0

        async def catch_up() -> None:
            nonlocal subscriptions
            subscriptions += 1
            if subscriptions > 1:  # the first follows start(), which has just loaded
                await self.load()

        await Follower("keys", state, KEYS_CHANNEL, reload, catch_up=catch_up).run()

    def start(self) -> None:
        """Start the periodic refresh on the running loop."""
        self._refresher.start()

    async def close(self) -> None:
        """Stop the periodic refresh."""
        await self._refresher.stop()

    # -- questions ---------------------------------------------------------------------------

    def all_keys(self) -> list[SigningKey]:
        """Every known key, oldest first per algorithm."""
        return list(self._keys)

    def state(self, key: SigningKey, now: float | None = None) -> KeyState:
        """The lifecycle state of ``key`` at ``now``."""
        now = self._clock() if now is None else now
        if key.revoked_at is not None:
            return KeyState.REVOKED
        if now < key.activates_at:
            return KeyState.PENDING
        successors = [
            k.activates_at
            for k in self._keys
            if k.alg == key.alg
            and k.generation > key.generation
            and k.activates_at <= now
            and k.revoked_at is None
        ]
        if not successors:
            return KeyState.ACTIVE
        return KeyState.EXPIRED if min(successors) + self.policy.retention <= now else KeyState.RETIRED

    def signing_key(self, alg: str, now: float | None = None) -> ActiveKey:
        """The key that signs ``alg`` now. Raises :class:`NoSigningKey`."""
        now = self._clock() if now is None else now
        cached = self._signing.get(alg)
        if cached is not None and cached[1] <= now < cached[2]:
            return cached[0]
        candidates = [
            k for k in self._keys if k.alg == alg and k.activates_at <= now and k.revoked_at is None
        ]
        if not candidates:
            raise NoSigningKey(f"no active {alg} signing key: run `bastion keys rotate --alg {alg}`")
        key = max(candidates, key=lambda k: k.generation)
        active = ActiveKey(kid=key.kid, alg=key.alg, private_key=self._private[key.kid])
        # Valid until a newer key of this algorithm activates (or the key set changes).
        later = [k.activates_at for k in self._keys if k.alg == alg and k.generation > key.generation]
        self._signing[alg] = (active, key.activates_at, min(later, default=float("inf")))
        return active

    def published(self, now: float | None = None) -> list[SigningKey]:
        """Keys in JWKS: pending, active and retired (never expired or revoked)."""
        now = self._clock() if now is None else now
        live = (KeyState.PENDING, KeyState.ACTIVE, KeyState.RETIRED)
        return [k for k in self._keys if self.state(k, now) in live]

    def public_key(self, kid: str, now: float | None = None) -> tuple[SigningKey, jose.PublicKey] | None:
        """A published key by ``kid`` and its public key object, for verifying our own tokens."""
        for key in self.published(now):
            if key.kid == kid:
                return key, self._public[kid]
        return None

    def jwks(self, now: float | None = None) -> dict[str, list[dict[str, Any]]]:
        """The JWK Set (RFC 7517 §5): public members only, with ``kid``, ``alg`` and ``use``."""
        return {"keys": [jwk_of(key) for key in self.published(now)]}


def jwk_of(key: SigningKey) -> dict[str, Any]:
    """The published JWK of ``key``; private members can never appear (``public_jwk`` has none)."""
    private = {"d", "p", "q", "dp", "dq", "qi", "k"}
    return {
        **{name: value for name, value in key.public_jwk.items() if name not in private},
        "kid": key.kid,
        "alg": key.alg,
        "use": key.use,
    }


def algorithms_for(settings_algorithms: Iterable[str]) -> tuple[str, ...]:
    """Distinct algorithms in a stable order."""
    return tuple(dict.fromkeys(settings_algorithms))
