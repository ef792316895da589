"""Stale-key checks: what ``bastion keys check`` (and an alert rule) reports.

Each check takes what was loaded or fetched and ``now``, and returns findings; none does I/O.
A finding names the key it is about, so that an operator (or a rule) knows what to act on.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bastion.services.keys import KeyService
from bastion.services.keys import KeyState

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem with one key."""

    #: ``overdue``, ``expiring``, ``unpublished``, ``revoked_published``, ``gateway_lag``,
    #: ``unreachable``.
    kind: str
    kid: str | None
    alg: str | None
    message: str

    def line(self) -> str:
        """One line for a terminal or a log."""
        return f"{self.kind}: {self.message}"


def rotation_due_in(keys: KeyService, now: float) -> dict[str, float]:
    """Per algorithm, the seconds until its active key is due for rotation (negative: overdue):
    what :func:`check_rotation` judges, as a number for the ``key_expiry`` alert rule."""
    period = keys.policy.rotation_period
    due: dict[str, float] = {}
    for alg in keys.policy.algorithms:
        for key in keys.all_keys():
            if key.alg == alg and key.generation >= 1 and keys.state(key, now) is KeyState.ACTIVE:
                due_in = key.activates_at + period - now
                due[alg] = min(due.get(alg, due_in), due_in)
    return due


def check_rotation(keys: KeyService, now: float, *, grace: float, warn_within: float) -> list[Finding]:
    """Signing keys older than the rotation period plus ``grace``, or due within ``warn_within``
    seconds with no successor published yet."""
    findings = []
    period = keys.policy.rotation_period
    due = rotation_due_in(keys, now)
    for alg in keys.policy.algorithms:
        active = [k for k in keys.all_keys() if k.alg == alg and keys.state(k, now) is KeyState.ACTIVE]
        pending = [k for k in keys.all_keys() if k.alg == alg and keys.state(k, now) is KeyState.PENDING]
        for key in active:
            if key.generation < 1 or alg not in due:
                continue
            age = now - key.activates_at
            due_in = key.activates_at + period - now
            if age > period + grace:
                findings.append(
                    Finding(
                        "overdue",
                        key.kid,
                        alg,
                        f"{alg} key {key.kid} has signed for {age / DAY:.1f} days; rotation was due after "
                        f"{period / DAY:g} (run `bastion keys rotate --alg {alg}`, or check that a server runs)",
                    )
                )
            elif due_in <= warn_within and not pending:
                findings.append(
                    Finding(
                        "expiring",
                        key.kid,
                        alg,
                        f"{alg} key {key.kid} is due for rotation in {max(due_in, 0) / DAY:.1f} days and no "
                        "successor is published yet",
                    )
                )
    return findings


def served_kids(jwks: Mapping[str, Any]) -> set[str]:
    """The ``kid`` of every key in a JWK Set document (keys without one are skipped).

    Raises:
        ValueError: it is not a JWK Set.
    """
    entries = jwks.get("keys")
    if not isinstance(entries, list):
        raise ValueError("not a JWK Set (no 'keys' array)")
    return {
        entry["kid"] for entry in entries if isinstance(entry, dict) and isinstance(entry.get("kid"), str)
    }


def check_jwks(keys: KeyService, served: Iterable[str], now: float, *, where: str) -> list[Finding]:
    """Published keys missing from the JWKS that ``where`` serves, and revoked keys it still serves."""
    served = set(served)
    findings = [
        Finding(
            "unpublished",
            key.kid,
            key.alg,
            f"{keys.state(key, now).value} {key.alg} key {key.kid} is missing from the JWKS at {where}",
        )
        for key in keys.published(now)
        if key.kid not in served
    ]
    findings.extend(
        Finding(
            "revoked_published",
            key.kid,
            key.alg,
            f"revoked {key.alg} key {key.kid} is still served at {where}",
        )
        for key in keys.all_keys()
        if key.revoked_at is not None and key.kid in served
    )
    return findings


def check_gateway(
    keys: KeyService, issuer: str, held: Mapping[str, Iterable[str]], now: float, *, where: str
) -> list[Finding]:
    """Keys published for longer than the publish delay that the gateway at ``where`` does not
    hold for ``issuer`` (its cached JWKS lags: a token they sign would make it refetch, or fail
    while the issuer is unreachable)."""
    if issuer not in held:
        return [
            Finding("gateway_lag", None, None, f"the gateway at {where} holds no keys of issuer {issuer}")
        ]
    cached = set(held[issuer])
    return [
        Finding(
            "gateway_lag",
            key.kid,
            key.alg,
            f"the gateway at {where} lacks {keys.state(key, now).value} {key.alg} key {key.kid}, "
            f"published {(now - key.created_at) / 60:.0f} min ago",
        )
        for key in keys.published(now)
        if key.kid not in cached and now - key.created_at > keys.policy.publish_delay
    ]
