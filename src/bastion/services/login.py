"""Password sign-in with brute-force throttling.

Failures are counted per account (``login:acct:<username>``) and per client IP
(``login:ip:<ip>``) in the fast-state store, so the limits hold across processes when it is
Redis. After ``free_attempts`` failures each further attempt waits a growing delay
(``base_delay * 2^n``, capped); at ``lockout_after`` failures attempts are refused with HTTP 429
until the window expires. The per-IP limits are ``ip_factor`` times looser, so one address
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
    """Counts failures in fast state and slows or refuses further attempts."""

    def __init__(
        self,
        state: FastState,
        policy: ThrottlePolicy | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._state = state
        self.policy = policy or ThrottlePolicy()
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

    async def before_attempt(self, username: str, ip: str) -> None:
        """Wait the delay the failure counts call for.

        Raises:
            SlowDown: too many failures for the account or the address (HTTP 429); its
                ``retry_after`` says when the window ends.
        """
        acct_key, ip_key = self._keys(username, ip)
        acct = int(await self._state.get(acct_key) or 0)
        by_ip = int(await self._state.get(ip_key) or 0)
        factor = self.policy.ip_factor
        for key, count, limit in (
            (acct_key, acct, self.policy.lockout_after),
            (ip_key, by_ip, self.policy.lockout_after * factor),
        ):
            if count >= limit:
                remaining = await self._state.ttl(key) or self.policy.window
                raise SlowDown(
                    "Too many attempts. Try again later.", retry_after=max(1, math.ceil(remaining))
                )
        delay = max(self.delay_for(acct), self.delay_for(by_ip, factor))
        if delay > 0:
            await self._sleep(delay)

    async def failed(self, username: str, ip: str) -> None:
        """Count a failure for the account and the address."""
        for key in self._keys(username, ip):
            await self._state.incr(key, self.policy.window)

    async def succeeded(self, username: str) -> None:
        """Forget the account's failures (the address keeps its count until the window ends)."""
        await self._state.delete(self._keys(username, "")[0])


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
    await throttle.before_attempt(username, ip)
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
        await throttle.failed(username, ip)
        services.audit.emit(
            "login.failed", user_id=user.user_id if user else None, reason=detail.replace(" ", "_"), ip=ip
        )
        raise LoginFailed(detail)
    await throttle.succeeded(username)
    if passwords.needs_rehash(user.password_hash):
        user = dataclasses.replace(user, password_hash=await passwords.hash(password))
        await users.update_user(user)
        services.audit.emit("user.password_rehashed", user_id=user.user_id)
    services.audit.emit("login.succeeded", user_id=user.user_id, ip=ip)
    return user
