"""Signing keys: generation, encryption at rest, rotation without a failed validation, revocation.

A key's state follows from its times alone, so every process agrees without coordination:

* **pending** — published in JWKS, not yet signing (``now < activates_at``);
* **active** — the newest activated key of its algorithm: it signs;
* **retired** — a newer key of its algorithm has activated; still published so that tokens it
  signed keep verifying;
* **expired** — retired for longer than the longest token lifetime: nothing it signed is
  valid any more, so it leaves JWKS;
* **revoked** — withdrawn (``revoked_at``, e.g. the private key leaked): out of JWKS at once,
  and every token it signed is refused.

Rotation creates the next generation with ``activates_at = now + publish_delay``; the publish
delay defaults to the JWKS ``max-age``, so every cache has seen the new key before a token
needs it. ``(alg, generation)`` is unique in storage, so two processes rotating at once cannot
both win. Generations of keys that sign count from 1. A key imported only to verify the tokens
of a previous provider gets a generation below every other key of its algorithm (0, -1, …): it
never signs, and counts as retired from the moment it was imported.

Revoking the active key first creates a replacement that signs at once (the published key set
never lacks a signer), then records the revocation durably, then announces it on
:data:`KEYS_CHANNEL`.
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

import orjson

from bastion.ops.audit import AuditLog
from bastion.ops.audit import Outcome
from bastion.ops.audit_events import EventType
from bastion.ops.background import Background
from bastion.ops.feeds import Follower
from bastion.protocol import jose
from bastion.protocol.models import SigningKey
from bastion.services.crypto import Sealer
from bastion.services.crypto import SealError
from bastion.storage.protocols import Conflict
from bastion.storage.protocols import FastState
from bastion.storage.protocols import KeyStore
from bastion.storage.protocols import NotFound
from bastion.storage.protocols import StorageError

#: Fast-state channel on which a process announces a change to the key set, after storing it:
#: a JSON object ``{"event": "created" | "revoked", "kid": "<kid>"}``. Processes that hear it
#: reload their keys (JWKS, signing); gateways drop a revoked kid and the tokens it signed.
KEYS_CHANNEL = "signing-keys"
#: Seconds a process's claim to report a key's lifecycle step is remembered (the steps of one
#: key are days apart; processes see a step within one refresh interval of each other).
_STEP_MEMORY = 86400.0
#: Steps at the same instant in the order they take effect (a key activates as another retires).
_STEP_ORDER = {"key.activated": 0, "key.retired": 1, "key.expired": 2}


def key_event(event: str, kid: str) -> bytes:
    """The :data:`KEYS_CHANNEL` message announcing ``event`` (``created``, ``revoked``) for ``kid``."""
    return orjson.dumps({"event": event, "kid": kid})


class KeyState(StrEnum):
    """Where a key is in its lifecycle."""

    PENDING = "pending"
    ACTIVE = "active"
    RETIRED = "retired"
    EXPIRED = "expired"
    REVOKED = "revoked"


class NoSigningKey(RuntimeError):
    """No activated key exists for an algorithm (run ``bastion keys rotate``)."""


class Activation(StrEnum):
    """When an imported key starts signing."""

    #: Never: it is published so that the tokens it signed keep verifying, then retires.
    NEVER = "never"
    #: At once: it becomes the active key of its algorithm.
    NOW = "now"
    #: After the publish delay, as a rotated key does.
    AFTER_DELAY = "after-delay"


@dataclass(frozen=True, slots=True)
class Revocation:
    """What ``KeyService.revoke`` did."""

    #: The revoked key as stored (``revoked_at`` set).
    key: SigningKey
    #: The key created to sign in its place when the revoked key was the active one.
    replacement: SigningKey | None
    #: It had been revoked before: nothing changed but a fresh announcement.
    already: bool


@dataclass(frozen=True, slots=True)
class ActiveKey:
    """A key ready to sign."""

    kid: str
    alg: str
    private_key: jose.PrivateKey


@dataclass(frozen=True, slots=True)
class Schedule:
    """Where an algorithm's rotation stands (epoch seconds)."""

    #: When the schedule creates the next key (:meth:`KeyService.ensure`).
    rotation_due: float
    #: When the signing key's successor takes over: the pending key's activation, else the
    #: planned one; ``now`` when nothing signs.
    active_until: float


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
        audit: AuditLog | None = None,
    ) -> None:
        self._store = store
        self._state = state
        self._audit = audit
        self._sealer = sealer
        self.policy = policy
        self._clock = clock
        self._refresh_interval = refresh_interval
        self._keys: list[SigningKey] = []
        self._private: dict[str, jose.PrivateKey] = {}
        self._public: dict[str, jose.PublicKey] = {}
        self._revoked: frozenset[str] = frozenset()
        self._refresher = Background(self.run)
        #: alg → (key, valid from, valid until): the signing key without a scan per token.
        self._signing: dict[str, tuple[ActiveKey, float, float]] = {}
        #: Lifecycle steps up to this time have been looked at (:meth:`observe`).
        self._observed = clock()

    # -- loading -----------------------------------------------------------------------------

    async def load(self) -> None:
        """Read every key from storage and decrypt the private keys not seen before (never a
        revoked one)."""
        rows = await self._store.list_keys()
        for key, sealed in rows:
            if key.revoked_at is not None:  # it never signs or verifies again: not even in memory
                self._private.pop(key.kid, None)
                self._public.pop(key.kid, None)
                continue
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
        self._revoked = frozenset(key.kid for key in self._keys if key.revoked_at is not None)
        self._signing.clear()

    async def ensure(self) -> list[SigningKey]:
        """Create missing keys and rotate due ones (the automatic schedule); returns new keys.

        An algorithm without a signer (no key yet, or its active key revoked) gets one that signs
        at once.
        """
        now = self._clock()
        created = []
        for alg in self.policy.algorithms:
            generation = 1 + max((k.generation for k in self._keys if k.alg == alg), default=0)
            if self._signer(alg, now) is None:
                why = "no_signing_key" if generation > 1 else "first_key"
                created.append(await self.rotate(alg, publish_delay=0.0, generation=generation, reason=why))
                continue
            newest = self._newest(alg)
            if newest is not None and newest.activates_at <= now and self._rotation_due(newest) <= now:
                created.append(await self.rotate(alg, generation=generation, reason="scheduled_rotation"))
        return created

    def _newest(self, alg: str) -> SigningKey | None:
        """The newest key of ``alg`` that signs or will (not revoked, not imported to verify)."""
        live = [k for k in self._keys if k.alg == alg and k.generation >= 1 and k.revoked_at is None]
        return max(live, key=lambda k: k.generation, default=None)

    def _rotation_due(self, newest: SigningKey) -> float:
        """When the schedule creates the successor of ``newest``: published ``publish_delay``
        before it must sign, ``rotation_period`` after ``newest`` started signing."""
        return newest.activates_at + self.policy.rotation_period - self.policy.publish_delay

    def schedule(self, alg: str, now: float | None = None) -> Schedule | None:
        """The rotation schedule of ``alg`` at ``now`` (``None``: no key of ``alg`` yet)."""
        now = self._clock() if now is None else now
        newest = self._newest(alg)
        if newest is None:
            return None
        signer = self._signer(alg, now)
        if signer is None:
            active_until = now
        elif newest.generation > signer.generation:
            active_until = newest.activates_at
        else:
            active_until = signer.activates_at + self.policy.rotation_period
        return Schedule(rotation_due=self._rotation_due(newest), active_until=active_until)

    async def rotate(
        self,
        alg: str,
        *,
        publish_delay: float | None = None,
        generation: int | None = None,
        reason: str = "manual_rotation",
    ) -> SigningKey:
        """Create the next key for ``alg``; it signs ``publish_delay`` seconds after every process
        serves it.

        Other processes learn of the key from a message on :data:`KEYS_CHANNEL`, or at the latest
        on their next refresh, so a non-zero delay is counted from one refresh interval after
        now: JWKS caches then hold the key for the whole delay before a token needs it.

        With ``generation``, the key is created only if no process created that generation
        first; otherwise the existing one is returned (the automatic schedule uses this so that
        processes deciding at the same moment create one key between them).

        Audited as ``key.created`` with ``reason`` (only by the process whose key was stored).
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
        await self._announce("created", kid)
        self._emit("key.created", key, reason=reason)
        return key

    async def revoke(self, kid: str) -> Revocation:
        """Withdraw a key at once: it leaves JWKS, stops signing, and its tokens are refused.

        When it is the active key of an algorithm this server signs, a replacement is created
        first and signs at once (no publish delay: the revoked key must not sign meanwhile), so
        no process is ever left without a signer. The revocation is committed before it is
        announced on :data:`KEYS_CHANNEL`; a process that misses the message catches up on its
        next refresh. Revoking a revoked key announces it again and changes nothing else.

        Raises:
            NotFound: no key has this ``kid``.
        """
        await self.load()
        key = next((k for k in self._keys if k.kid == kid), None)
        if key is None:
            raise NotFound(f"no signing key has kid {kid!r} (`bastion keys list` shows them)")
        replacement = None
        already = key.revoked_at is not None
        if not already and key.alg in self.policy.algorithms and self.state(key) is KeyState.ACTIVE:
            replacement = await self.rotate(key.alg, publish_delay=0.0, reason="replaces_revoked_key")
        revoked = await self._store.revoke_key(kid, self._clock())
        if revoked is None:  # deleted meanwhile
            raise NotFound(f"no signing key has kid {kid!r} (`bastion keys list` shows them)")
        await self.load()
        await self._announce("revoked", kid)
        if not already:
            self._emit(
                "key.revoked",
                revoked,
                outcome="success",
                extra={"replacement": None if replacement is None else replacement.kid},
            )
        return Revocation(key=revoked, replacement=replacement, already=already)

    async def import_key(
        self,
        private_key: jose.PrivateKey,
        *,
        kid: str,
        alg: str,
        activate: Activation = Activation.NEVER,
        publish_delay: float | None = None,
    ) -> SigningKey:
        """Store a key made elsewhere (another provider's), sealed like a generated one.

        It is published at once, so tokens it signed before the import verify after it. With
        :attr:`Activation.NEVER` it never signs and stays published as long as a retired key
        does (the longest token lifetime from the import); otherwise it becomes the next
        generation of its algorithm and signs now or after the publish delay.

        Raises:
            Conflict: a key with this ``kid``, or this very key under another kid, exists.
            ValueError: the key does not fit ``alg``, or signing was asked for an algorithm this
                server does not sign with.
        """
        if not jose.key_fits_alg(private_key.public_key(), alg):
            raise ValueError(f"the key does not fit {alg}")
        await self.load()
        public = jose.public_jwk(private_key)
        for existing in self._keys:
            if existing.kid == kid:
                raise Conflict(f"a signing key with kid {kid!r} already exists")
            if existing.public_jwk == public:
                raise Conflict(f"this key is already stored, with kid {existing.kid!r}")
        same_alg = [k.generation for k in self._keys if k.alg == alg]
        now = self._clock()
        if activate is Activation.NEVER:
            generation = min([*same_alg, 1]) - 1
            activates_at = now
        else:
            if alg not in self.policy.algorithms:
                raise ValueError(
                    f"this server does not sign {alg} (see access_token_algorithm and id_token_algorithm): "
                    "import the key to verify only"
                )
            generation = 1 + max(same_alg, default=0)
            delay = 0.0
            if activate is Activation.AFTER_DELAY:
                delay = (self.policy.publish_delay if publish_delay is None else publish_delay) + (
                    self._refresh_interval
                )
            activates_at = now + delay
        key = SigningKey(
            kid=kid,
            alg=alg,
            public_jwk=public,
            created_at=now,
            activates_at=activates_at,
            generation=generation,
        )
        await self._store.add_key(
            key, self._sealer.seal(jose.private_key_to_pem(private_key), aad=kid.encode())
        )
        await self.load()
        await self._announce("created", kid)
        self._emit("key.imported", key, extra={"activate": activate.value})
        return key

    def _emit(
        self,
        type: EventType,
        key: SigningKey,
        *,
        outcome: Outcome = "success",
        reason: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Audit ``type`` about ``key`` (its kid is the subject)."""
        if self._audit is not None:
            details = {"alg": key.alg, "generation": key.generation, "activates_at": key.activates_at}
            self._audit.emit(
                type, outcome=outcome, subject=key.kid, reason=reason, details={**details, **(extra or {})}
            )

    def observe(self, now: float | None = None) -> list[tuple[EventType, str, float]]:
        """Audit the lifecycle steps keys took since the last call (or since this service was
        made): ``key.activated``, ``key.retired``, ``key.expired``, each step at ``since <= when <
        now`` (half-open, so a step on the boundary is seen once). They follow from the keys'
        times alone, so each process sees them; :meth:`run` calls this, and across processes
        only the first to claim a step in the fast-state store reports it.

        Returns:
            ``(type, kid, when)`` of each step seen, oldest first.
        """
        now = self._clock() if now is None else now
        since, self._observed = self._observed, now
        steps = sorted(
            (
                (when, type, key)
                for key in self._keys
                for type, when in _steps(self, key)
                if since <= when < now
            ),
            key=lambda step: (step[0], _STEP_ORDER[step[1]]),
        )
        return [(type, key.kid, when) for when, type, key in steps]

    async def report_steps(self, now: float | None = None) -> int:
        """Audit the steps :meth:`observe` finds, each once across processes; returns how many
        this process reported."""
        reported = 0
        for type, kid, when in self.observe(now):
            if self._state is not None:
                claim = f"audit-key-step:{kid}:{type}"
                if not await self._state.add(claim, b"1", _STEP_MEMORY):
                    continue
            key = next(k for k in self._keys if k.kid == kid)
            self._emit(type, key, extra={"at": when})
            reported += 1
        return reported

    async def _announce(self, event: str, kid: str) -> None:
        if self._state is not None:
            with contextlib.suppress(StorageError):  # the periodic refresh covers a lost message
                await self._state.publish(KEYS_CHANNEL, key_event(event, kid))

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
                    await self.report_steps()
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

    def is_revoked(self, kid: str) -> bool:
        """Whether the key ``kid`` was revoked (as of the last load)."""
        return kid in self._revoked

    def state(self, key: SigningKey, now: float | None = None) -> KeyState:
        """The lifecycle state of ``key`` at ``now``."""
        now = self._clock() if now is None else now
        if key.revoked_at is not None:
            return KeyState.REVOKED
        if now < key.activates_at:
            return KeyState.PENDING
        if key.generation < 1:  # imported to verify only: retired from its import
            retired_at = key.activates_at
        else:
            # A successor revoked after it activated counts too: it did take over, so the older
            # key's tokens are as old as ever, and a key that left JWKS never comes back.
            successors = [
                k.activates_at
                for k in self._keys
                if k.alg == key.alg and k.generation > key.generation and _took_over(k, now)
            ]
            if not successors:
                return KeyState.ACTIVE
            retired_at = min(successors)
        return KeyState.EXPIRED if retired_at + self.policy.retention <= now else KeyState.RETIRED

    def _signer(self, alg: str, now: float) -> SigningKey | None:
        """The newest key of ``alg`` that took over, unless it was revoked since: then ``None``
        (an older key must not sign again: it may have left JWKS). ``None`` if there is none."""
        candidates = [k for k in self._keys if k.alg == alg and k.generation >= 1 and _took_over(k, now)]
        if not candidates:
            return None
        key = max(candidates, key=lambda k: k.generation)
        return None if key.revoked_at is not None else key

    def signing_key(self, alg: str, now: float | None = None) -> ActiveKey:
        """The key that signs ``alg`` now. Raises :class:`NoSigningKey`."""
        now = self._clock() if now is None else now
        cached = self._signing.get(alg)
        if cached is not None and cached[1] <= now < cached[2]:
            return cached[0]
        key = self._signer(alg, now)
        if key is None:
            raise NoSigningKey(
                f"no active {alg} signing key: run `bastion keys rotate --alg {alg} --publish-delay 0`"
            )
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


def _steps(service: KeyService, key: SigningKey) -> list[tuple[EventType, float]]:
    """When ``key`` activated, retired and expired (the steps it will take or took)."""
    if key.revoked_at is not None:
        return []  # revocation is audited when it happens
    steps: list[tuple[EventType, float]] = []
    if key.generation >= 1:
        steps.append(("key.activated", key.activates_at))
        successors = [
            k.activates_at
            for k in service.all_keys()
            # as in state(): a successor revoked after it activated did take over
            if k.alg == key.alg
            and k.generation > key.generation
            and (k.revoked_at is None or k.revoked_at >= k.activates_at)
        ]
        if not successors:
            return steps
        retired_at = min(successors)
        steps.append(("key.retired", retired_at))
    else:
        retired_at = key.activates_at  # imported to verify only: retired from its import
    steps.append(("key.expired", retired_at + service.policy.retention))
    return steps


def _took_over(key: SigningKey, now: float) -> bool:
    """Whether ``key`` activated by ``now``; a key revoked while pending never did."""
    return key.activates_at <= now and (key.revoked_at is None or key.revoked_at >= key.activates_at)


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
