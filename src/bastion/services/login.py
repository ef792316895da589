"""Password sign-in with brute-force throttling.

Attempts are counted per account (``login:acct:<username>``) and per client IP
(``login:ip:<ip>``) in the fast-state store, so the limits hold across processes (a SQLite file
on one machine, Redis across machines). Each attempt is counted first, with one atomic
increment per counter, and only then decided: of N concurrent guesses exactly the first
``lockout_after`` reach the password check, whatever the number of processes. A read, then a
check, then a count would let every concurrent guess through before the first one is counted.

After ``free_attempts`` failures each further attempt waits a growing delay
(``base_delay * 2^n``, capped); the attempt after ``lockout_after`` failures is refused with
HTTP 429 until the window, which starts at the first counted attempt, expires (refused attempts
are counted too but do not extend it). The per-IP limits are ``ip_factor`` times looser, so one address
guessing across many accounts is slowed too.

Uniform answers: an unknown user, a wrong password and a disabled account get the same error
text, and an unknown user costs one argon2 verification of a dummy hash (OWASP Authentication
Cheat Sheet, "Authentication Responses").
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Awaitable
from collections.abc import Callable
from dataclasses import dataclass

from bastion.protocol.errors import SlowDown
from bastion.protocol.models import User
from bastion.services.container import Services
from bastion.services.metrics import ServerMetrics
from bastion.services.users import Passwords
from bastion.services.users import is_username
from bastion.services.users import people
from bastion.storage.protocols import FastState

#: The one message for every failed sign-in.
LOGIN_FAILED = "Incorrect username or password."


class LoginFailed(Exception):
    """Sign-in failed; ``str(exc)`` is :data:`LOGIN_FAILED` whatever the cause."""

    def __init__(self, detail: str) -> None:
        super().__init__(LOGIN_FAILED)
        #: For logs only: why it failed.
        self.detail = detail


class Throttled(SlowDown):
    """Over a sign-in limit (HTTP 429): ``limit`` names which (``account`` or ``address``);
    ``first`` is the first refusal of the window (the counts are atomic: exactly one is)."""

    def __init__(self, description: str, *, retry_after: int, limit: str, first: bool) -> None:
        super().__init__(description, retry_after=retry_after)
        self.limit = limit
        self.first = first


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """Limits for password guessing (seconds and counts)."""

    free_attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 4.0
    lockout_after: int = 10
    window: float = 900.0
    ip_factor: int = 5


class LoginThrottle:
    """Counts attempts in fast state and slows or refuses them; successes are given back."""

    def __init__(
        self,
        state: FastState,
        policy: ThrottlePolicy | None = None,
        *,
        metrics: ServerMetrics | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._state = state
        self.policy = policy or ThrottlePolicy()
        self._metrics = metrics
        self._sleep = sleep

    @staticmethod
    def _keys(username: str, ip: str) -> tuple[str, str]:
        return f"login:acct:{username.casefold()}", f"login:ip:{ip}"

    def delay_for(self, failures: int, scale: int = 1) -> float:
        """The wait before an attempt after ``failures`` failures (``scale``: IP looseness)."""
        excess = failures - self.policy.free_attempts * scale
        if excess < 0:
            return 0.0
        return float(min(self.policy.max_delay, self.policy.base_delay * 2 ** (excess // scale)))

    async def attempt(self, username: str, ip: str) -> None:
        """Count an attempt for the account and the address, then wait the delay the counts call
        for, or refuse.

        The counts include this attempt, so the delay follows the failures before it.

        Raises:
            Throttled: more than ``lockout_after`` attempts for the account (``ip_factor`` times
                that for the address) in the window (HTTP 429); its ``retry_after`` says when
                the window ends.
        """
        acct_key, ip_key = self._keys(username, ip)
        window = self.policy.window
        acct = await self._state.incr(acct_key, window)
        by_ip = await self._state.incr(ip_key, window)
        factor = self.policy.ip_factor
        for name, key, count, limit in (
            ("account", acct_key, acct, self.policy.lockout_after),
            ("address", ip_key, by_ip, self.policy.lockout_after * factor),
        ):
            if count > limit:
                if self._metrics is not None:
                    self._metrics.throttle("login", name)
                remaining = await self._state.ttl(key) or window
                raise Throttled(
                    "Too many attempts. Try again later.",
                    retry_after=max(1, math.ceil(remaining)),
                    limit=name,
                    first=count == limit + 1,
                )
        delay = max(self.delay_for(acct - 1), self.delay_for(by_ip - 1, factor))
        if delay > 0:
            await self._sleep(delay)

    async def succeeded(self, username: str, ip: str) -> None:
        """Give back a successful attempt: forget the account's failures, and take this attempt
        off the address's count.

        The address keeps its failures until the window ends, but a success is not a guess:
        left counted, the sign-ins of everyone behind one NAT or proxy would add up to a
        lockout of that address. (Should the window end between the count and this call, the
        address starts one below zero: one extra attempt, once.)
        """
        acct_key, ip_key = self._keys(username, ip)
        await self._state.delete(acct_key)
        await self._state.incr(ip_key, self.policy.window, amount=-1)


async def authenticate(
    services: Services,
    passwords: Passwords,
    throttle: LoginThrottle,
    *,
    username: str,
    password: str,
    ip: str,
) -> User:
    """Check a username and password.

    Raises:
        SlowDown: throttled (HTTP 429).
        LoginFailed: unknown user, wrong password or disabled account, indistinguishably.
    """
    try:
        await throttle.attempt(username, ip)  # counted before the password is checked
    except Throttled as exc:
        if exc.first:  # once per limit and window, however long a flood goes on
            services.audit.emit(
                "login.throttled", outcome="denied", address=ip, reason=f"too_many_attempts_per_{exc.limit}"
            )
        raise
    users = people(services).users
    # A name no user can have is not looked up (a NUL would make PostgreSQL fail, not miss).
    user = await users.get_user_by_username(username) if is_username(username) else None
    if user is None:
        await passwords.dummy_verify(password)
        ok, detail = False, "unknown user"
    else:
        ok = await passwords.verify(user.password_hash, password)
        detail = "wrong password" if not ok else "disabled account" if user.disabled else ""
        ok = ok and not user.disabled
    if not ok or user is None:
        # Never the typed username: a password typed into the wrong field would be logged.
        services.audit.emit(
            "login.failed",
            outcome="failure",
            subject=user.user_id if user else None,
            address=ip,
            reason=detail.replace(" ", "_"),
        )
        raise LoginFailed(detail)
    await throttle.succeeded(username, ip)
    if passwords.needs_rehash(user.password_hash):
        user = dataclasses.replace(user, password_hash=await passwords.hash(password))
        await users.update_user(user)
        services.audit.emit("user.password_rehashed", actor=user.user_id, subject=user.user_id)
    services.audit.emit("login.succeeded", actor=user.user_id, subject=user.user_id, address=ip)
    return user
