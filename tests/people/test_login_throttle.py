"""The login throttle on every fast-state backend (SQLite file, memory, Redis), in sequence and
under concurrent guessing: each attempt is counted before its password is checked."""

from __future__ import annotations

import asyncio

import pytest

from bastion.protocol.errors import SlowDown
from bastion.services.login import LoginFailed
from bastion.services.login import LoginThrottle
from bastion.services.login import ThrottlePolicy
from bastion.services.login import authenticate
from bastion.services.users import Passwords

from .flows import PASSWORD
from .flows import alice
from .support import CHEAP_PASSWORDS
from .support import World

pytestmark = pytest.mark.anyio

GUESSES = 200


class CountingPasswords(Passwords):
    """The real argon2id verification (cheap parameters), counting each one that runs."""

    def __init__(self) -> None:
        super().__init__(CHEAP_PASSWORDS.hasher)
        self.verified = 0

    async def verify(self, stored: str, password: str) -> bool:
        self.verified += 1
        return await super().verify(stored, password)


class NoWait:
    async def __call__(self, delay: float) -> None:
        await asyncio.sleep(0)


async def _guess(world: World, passwords: Passwords, throttle: LoginThrottle, **kwargs: str) -> str:
    try:
        await authenticate(world.services, passwords, throttle, **kwargs)
    except LoginFailed:
        return "failed"
    except SlowDown as exc:
        refusal = (exc.status_hint, 1 <= exc.retry_after <= 60)
        return "slow down" if refusal == (429, True) else f"bad refusal {refusal}"
    return "signed in"


@pytest.mark.parametrize("username", ["alice", "nobody"])
async def test_concurrent_guesses_on_one_account_reach_argon2_at_most_lockout_after_times(
    state_world: World, username: str
) -> None:
    await alice(state_world)
    passwords = CountingPasswords()
    policy = ThrottlePolicy(free_attempts=2, base_delay=0.01, max_delay=0.02, lockout_after=5, window=60)
    throttle = LoginThrottle(state_world.services.stores.state, policy, sleep=NoWait())
    outcomes = await asyncio.gather(
        *(
            _guess(
                state_world, passwords, throttle, username=username, password="wrong guess", ip=f"10.0.{i}.1"
            )
            for i in range(GUESSES)
        )
    )
    assert passwords.verified == outcomes.count("failed") == 5, "unknown users cost a dummy verification"
    assert outcomes.count("slow down") == GUESSES - 5
    assert len(state_world.named("login.failed")) == 5


async def test_concurrent_guesses_from_one_address_are_limited_across_accounts(state_world: World) -> None:
    passwords = CountingPasswords()
    policy = ThrottlePolicy(lockout_after=4, window=60, ip_factor=5)  # 20 per address
    throttle = LoginThrottle(state_world.services.stores.state, policy, sleep=NoWait())
    outcomes = await asyncio.gather(
        *(
            _guess(
                state_world, passwords, throttle, username=f"user{i}", password="wrong guess", ip="192.0.2.7"
            )
            for i in range(GUESSES)
        )
    )
    assert passwords.verified == outcomes.count("failed") == 20
    assert outcomes.count("slow down") == GUESSES - 20


async def test_sequential_attempts_slow_down_then_lock_and_a_success_gives_its_attempt_back(
    state_world: World,
) -> None:
    await alice(state_world)
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)

    policy = ThrottlePolicy(
        free_attempts=2, base_delay=0.5, max_delay=2.0, lockout_after=4, window=60, ip_factor=2
    )
    throttle = LoginThrottle(state_world.services.stores.state, policy, sleep=sleep)

    async def attempt(password: str, username: str = "alice", ip: str = "10.0.0.1") -> str:
        return await _guess(
            state_world, CHEAP_PASSWORDS, throttle, username=username, password=password, ip=ip
        )

    # Three users behind one address sign in 12 times: successes do not add up to a lockout
    # (the address allows 4 * 2 = 8 attempts).
    for _ in range(12):
        assert await attempt(PASSWORD) == "signed in"
    assert delays == []
    assert [await attempt("wrong guess") for _ in range(4)] == ["failed"] * 4
    assert delays == [0.5, 1.0], "the 3rd and 4th failures waited"
    assert await attempt(PASSWORD) == "slow down", "4 failures: locked, even with the right password"
    assert await attempt(PASSWORD, ip="10.0.0.2") == "slow down", "the account is locked from anywhere"
    # The first address has 4 failures and one refused attempt; 3 more guesses lock it too.
    assert [await attempt("wrong guess", username=f"u{i}") for i in range(4)] == ["failed"] * 3 + [
        "slow down"
    ]
    assert await attempt("wrong guess", username="other", ip="10.0.0.3") == "failed"
