"""The sign-in services over real stores: users, login throttling, codes, refresh rotation."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from argon2 import PasswordHasher

from bastion.protocol import jose
from bastion.protocol.errors import InvalidGrant
from bastion.protocol.errors import InvalidScope
from bastion.protocol.errors import SlowDown
from bastion.protocol.oidc.core import left_half_hash
from bastion.protocol.rfc6749.authorize import Interaction
from bastion.services import authorize as az
from bastion.services import users as us
from bastion.services.authorization_code import exchange_code
from bastion.services.login import LOGIN_FAILED
from bastion.services.login import LoginFailed
from bastion.services.login import LoginThrottle
from bastion.services.login import ThrottlePolicy
from bastion.services.login import authenticate
from bastion.services.refresh import introspect_refresh_token
from bastion.services.refresh import refresh
from bastion.services.refresh import revoke_refresh_token
from bastion.services.users import Passwords

from .flows import PASSWORD
from .flows import alice
from .flows import authorize_params
from .flows import query
from .flows import sign_in_for_code
from .flows import token_params
from .support import CHEAP_PASSWORDS
from .support import World
from .support import web_client

pytestmark = pytest.mark.anyio

#: Event types the tests here emit and assert that the run through the app does not.
OTHER_PEOPLE_TYPES = frozenset({"user.password_rehashed", "refresh_token.grace_replay"})


def _claims(token: str) -> dict[str, object]:
    return orjson.loads(jose.parse_compact(token).payload)  # type: ignore[no-any-return]


# -- users and roles -------------------------------------------------------------------------


async def test_user_lifecycle(sqlite_world: World) -> None:
    services = sqlite_world.services
    with pytest.raises(us.UserError, match="unknown role"):
        await us.create_user(services, "alice", PASSWORD, roles=["reader"], passwords=CHEAP_PASSWORDS)
    user = await alice(sqlite_world)
    assert user.password_hash.startswith("$argon2id$")
    assert await us.user_scopes(services, user) == {"orders:read"}
    with pytest.raises(us.UserError, match="taken"):
        await us.create_user(services, "ALICE", PASSWORD, passwords=CHEAP_PASSWORDS)
    with pytest.raises(us.UserError, match="passwords must be"):
        await us.create_user(services, "bob", "short", passwords=CHEAP_PASSWORDS)
    with pytest.raises(us.UserError, match="usernames"):
        await us.create_user(services, "bad name", PASSWORD, passwords=CHEAP_PASSWORDS)
    with pytest.raises(us.UserError, match="e-mail"):
        await us.create_user(services, "bob", PASSWORD, email="nope", passwords=CHEAP_PASSWORDS)
    with pytest.raises(us.UserError, match="exists"):
        await us.create_role(services, "reader", ["x"])
    await us.create_role(services, "writer", ["orders:write orders:read"])
    changed = await us.set_roles(services, "alice", ["reader", "writer"])
    assert await us.user_scopes(services, changed) == {"orders:read", "orders:write"}
    assert [u.username for u in await us.list_users(services)] == ["alice"]
    assert [r.name for r in await us.list_roles(services)] == ["reader", "writer"]
    assert (await us.set_disabled(services, "alice")).disabled
    assert not (await us.set_disabled(services, "alice", False)).disabled
    assert await us.delete_role(services, "writer")
    assert not await us.delete_role(services, "writer")
    assert await us.delete_user(services, "alice")
    assert not await us.delete_user(services, "alice")
    with pytest.raises(us.UserError, match="no user"):
        await us.set_disabled(services, "alice")
    assert [e.type for e in sqlite_world.events if not e.type.startswith("key.")][:2] == [
        "role.created",
        "user.created",
    ]


# -- login -----------------------------------------------------------------------------------


class Sleeps:
    """Records the delays the throttle asks for instead of waiting them."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


async def test_login_uniform_failures_and_throttle(sqlite_world: World) -> None:
    services = sqlite_world.services
    await alice(sqlite_world)
    sleeps = Sleeps()
    policy = ThrottlePolicy(
        free_attempts=2, base_delay=0.5, max_delay=2.0, lockout_after=5, window=60, ip_factor=3
    )
    throttle = LoginThrottle(services.stores.state, policy, sleep=sleeps)

    async def attempt(username: str, password: str, ip: str = "10.0.0.1") -> object:
        return await authenticate(
            services, CHEAP_PASSWORDS, throttle, username=username, password=password, ip=ip
        )

    user = await attempt("Alice", PASSWORD)  # usernames are case-insensitive
    assert user.username == "alice"  # type: ignore[attr-defined]
    failures = []
    for username in ("alice", "nobody", "alice", "alice"):
        with pytest.raises(LoginFailed) as info:
            await attempt(username, "wrong password!")
        failures.append(str(info.value))
    assert set(failures) == {LOGIN_FAILED}, "unknown user and wrong password read the same"
    assert sleeps.delays == [0.5]  # the 4th attempt on alice came after 2 free failures
    with pytest.raises(LoginFailed):
        await attempt("alice", "wrong password!")
    assert sleeps.delays == [0.5, 1.0]
    with pytest.raises(LoginFailed):
        await attempt("alice", "wrong password!")
    with pytest.raises(SlowDown) as slow:  # 5 failures: locked, even with the right password
        await attempt("alice", PASSWORD)
    assert slow.value.status_hint == 429
    assert 1 <= slow.value.retry_after <= 60
    # Another account from another address is unaffected.
    with pytest.raises(LoginFailed):
        await attempt("bob", "whatever!", ip="10.0.0.2")
    reasons = [e.reason for e in sqlite_world.named("login.failed")]
    assert "unknown_user" in reasons
    assert "wrong_password" in reasons


async def test_ip_throttle_spans_accounts(sqlite_world: World) -> None:
    services = sqlite_world.services
    policy = ThrottlePolicy(free_attempts=1, base_delay=0.01, lockout_after=2, window=60, ip_factor=2)
    throttle = LoginThrottle(services.stores.state, policy, sleep=Sleeps())
    for name in ("u1", "u2", "u3", "u4"):
        with pytest.raises(LoginFailed):
            await authenticate(
                services, CHEAP_PASSWORDS, throttle, username=name, password="x" * 8, ip="1.2.3.4"
            )
    with pytest.raises(SlowDown):
        await authenticate(services, CHEAP_PASSWORDS, throttle, username="u5", password="x" * 8, ip="1.2.3.4")


async def test_disabled_user_cannot_sign_in_and_rehash_on_success(sqlite_world: World) -> None:
    services = sqlite_world.services
    await alice(sqlite_world)
    throttle = LoginThrottle(services.stores.state, sleep=Sleeps())
    stronger = Passwords(PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1))
    user = await authenticate(services, stronger, throttle, username="alice", password=PASSWORD, ip="1.1.1.1")
    assert "m=2048,t=2" in user.password_hash, "rehashed with the new parameters"
    [rehashed] = sqlite_world.named("user.password_rehashed")
    assert (rehashed.actor, rehashed.subject) == (user.user_id, user.user_id)
    stored = await us.people(services).users.get_user(user.user_id)
    assert stored is not None
    assert stored.password_hash == user.password_hash
    await us.set_disabled(services, "alice")
    with pytest.raises(LoginFailed) as info:
        await authenticate(services, stronger, throttle, username="alice", password=PASSWORD, ip="1.1.1.1")
    assert info.value.detail == "disabled account"


# -- authorization code ----------------------------------------------------------------------


async def test_code_flow_issues_tokens_and_id_token(sqlite_world: World) -> None:
    services = sqlite_world.services
    client = await web_client(services)
    user = await alice(sqlite_world)
    code, session = await sign_in_for_code(sqlite_world, user)
    now = sqlite_world.clock()
    body = await exchange_code(services, client, token_params(code), now)
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "openid profile orders:read offline_access"
    assert body["refresh_token"]
    access = _claims(body["access_token"])
    assert access["sub"] == user.user_id
    assert access["roles"] == ["reader"]
    id_token = jose.parse_compact(body["id_token"])
    assert id_token.header["alg"] == "RS256"
    found = services.keys.public_key(id_token.header["kid"])
    assert found is not None
    assert jose.verify("RS256", found[1], id_token.signing_input, id_token.signature)
    claims = _claims(body["id_token"])
    assert claims["aud"] == "web"
    assert claims["iss"] == services.settings.issuer
    assert claims["nonce"] == "nn"
    assert claims["sid"] == session.sid
    assert claims["auth_time"] == int(session.auth_time or 0)
    assert claims["at_hash"] == left_half_hash(body["access_token"], "RS256")
    # A remembered consent: the next request goes straight to the client.
    outcome = await az.authorize(services, authorize_params(), session)
    assert isinstance(outcome, az.Redirect)
    assert "code" in query(outcome.location)


async def test_code_replay_revokes_what_the_first_redemption_issued(sqlite_world: World) -> None:
    services = sqlite_world.services
    client = await web_client(services)
    code, _ = await sign_in_for_code(sqlite_world, await alice(sqlite_world))
    now = sqlite_world.clock()
    body = await exchange_code(services, client, token_params(code), now)
    assert (await services.tokens.introspect(body["access_token"], client, now))["active"]
    with pytest.raises(InvalidGrant):
        await exchange_code(services, client, token_params(code), now + 1)
    assert not (await services.tokens.introspect(body["access_token"], client, now + 2))["active"]
    with pytest.raises(InvalidGrant):
        await refresh(services, client, {"refresh_token": body["refresh_token"]}, now + 3)
    assert sqlite_world.named("authorization_code.replayed")


@pytest.mark.parametrize(
    "overrides",
    [
        {"code_verifier": "y" * 60},
        {"code_verifier": ""},
        {"redirect_uri": "https://app.example/other"},
        {"code": "not-a-code"},
    ],
)
async def test_code_exchange_refusals(sqlite_world: World, overrides: dict[str, str]) -> None:
    services = sqlite_world.services
    client = await web_client(services)
    code, _ = await sign_in_for_code(sqlite_world, await alice(sqlite_world))
    with pytest.raises(InvalidGrant):
        await exchange_code(services, client, token_params(code, **overrides), sqlite_world.clock())
    if "code" in overrides:
        return
    # A failed redemption burns the code (RFC 6749 §4.1.2: used at most once).
    with pytest.raises(InvalidGrant):
        await exchange_code(services, client, token_params(code), sqlite_world.clock())


async def test_code_expires_and_is_bound_to_client_and_session(sqlite_world: World) -> None:
    services = sqlite_world.services
    client = await web_client(services)
    other = await web_client(services, client_id="other", name="Other")
    user = await alice(sqlite_world)
    code, _ = await sign_in_for_code(sqlite_world, user)
    with pytest.raises(InvalidGrant):
        await exchange_code(services, client, token_params(code), sqlite_world.clock() + 61)
    code, _ = await sign_in_for_code(sqlite_world, user)
    with pytest.raises(InvalidGrant):
        await exchange_code(services, other, token_params(code), sqlite_world.clock())
    code, session = await sign_in_for_code(sqlite_world, user)
    await az.sign_out(services, session)
    with pytest.raises(InvalidGrant, match="login session"):
        await exchange_code(services, client, token_params(code), sqlite_world.clock())


async def test_no_refresh_token_without_grant_or_offline_access(sqlite_world: World) -> None:
    services = sqlite_world.services
    client = await web_client(services, grant_types=["authorization_code"])
    code, _ = await sign_in_for_code(sqlite_world, await alice(sqlite_world), scope="openid orders:read")
    body = await exchange_code(services, client, token_params(code), sqlite_world.clock())
    assert "refresh_token" not in body


async def test_scope_is_limited_by_roles(sqlite_world: World) -> None:
    services = sqlite_world.services
    client = await web_client(services)
    code, _ = await sign_in_for_code(
        sqlite_world, await alice(sqlite_world), scope="openid orders:read orders:write"
    )
    body = await exchange_code(services, client, token_params(code), sqlite_world.clock())
    assert body["scope"] == "openid orders:read"


async def test_prompt_and_max_age(sqlite_world: World) -> None:
    services = sqlite_world.services
    await web_client(services, first_party=True)
    user = await alice(sqlite_world)
    _, anonymous = await az.new_session(services)
    outcome = await az.authorize(services, authorize_params(prompt="none"), anonymous)
    assert isinstance(outcome, az.Redirect)
    assert query(outcome.location)["error"] == "login_required"
    _, session = await az.sign_in(services, anonymous, user, sqlite_world.clock())
    # First-party: no consent screen; prompt=none succeeds.
    outcome = await az.authorize(services, authorize_params(prompt="none"), session)
    assert isinstance(outcome, az.Redirect)
    assert "code" in query(outcome.location)
    outcome = await az.authorize(services, authorize_params(prompt="login"), session)
    assert isinstance(outcome, az.Interact)
    assert outcome.kind is Interaction.LOGIN
    outcome = await az.authorize(services, authorize_params(prompt="consent"), session)
    assert isinstance(outcome, az.Interact)
    assert outcome.kind is Interaction.CONSENT
    sqlite_world.clock.now += 120
    outcome = await az.authorize(services, authorize_params(max_age="60"), session)
    assert isinstance(outcome, az.Interact)
    assert outcome.kind is Interaction.LOGIN
    outcome = await az.authorize(services, authorize_params(max_age="600"), session)
    assert isinstance(outcome, az.Redirect)


async def test_consent_denied_and_pending_bound_to_session(sqlite_world: World) -> None:
    services = sqlite_world.services
    await web_client(services)
    user = await alice(sqlite_world)
    _, session = await az.sign_in(services, None, user, sqlite_world.clock())
    outcome = await az.authorize(services, authorize_params(), session)
    assert isinstance(outcome, az.Interact)
    assert outcome.kind is Interaction.CONSENT
    _, stranger = await az.new_session(services)
    assert await az.load_pending(services, outcome.pending_id, stranger) is None
    pending = await az.load_pending(services, outcome.pending_id, session)
    assert pending is not None
    view = await az.consent_view(services, pending, session)
    assert view is not None
    assert view["client_name"] == "Shop"
    assert [s["name"] for s in view["scopes"]] == ["openid", "profile", "orders:read", "offline_access"]
    denied = await az.answer_consent(services, pending, session, allow=False)
    assert isinstance(denied, az.Redirect)
    assert query(denied.location) == {
        "error": "access_denied",
        "error_description": "the user denied the request",
        "state": "st",
        "iss": services.settings.issuer,
    }


async def test_authorize_page_and_redirect_errors(sqlite_world: World) -> None:
    services = sqlite_world.services
    await web_client(services)
    _, session = await az.new_session(services)
    page = await az.authorize(services, authorize_params(redirect_uri="https://evil.example/cb"), session)
    assert isinstance(page, az.ShowError)
    page = await az.authorize(services, authorize_params(client_id="ghost"), session)
    assert isinstance(page, az.ShowError)
    redirect = await az.authorize(services, authorize_params(code_challenge_method="plain"), session)
    assert isinstance(redirect, az.Redirect)
    assert query(redirect.location)["error"] == "invalid_request"
    redirect = await az.authorize(services, authorize_params(response_type="token"), session)
    assert isinstance(redirect, az.Redirect)
    assert query(redirect.location)["error"] == "unsupported_response_type"


# -- refresh tokens --------------------------------------------------------------------------


async def _tokens(world: World, **overrides: str | None) -> dict[str, str]:
    client = await world.services.stores.clients.get_client("web") or await web_client(world.services)
    code, _ = await sign_in_for_code(world, await alice(world), **overrides)
    return await exchange_code(world.services, client, token_params(code), world.clock())


async def test_refresh_rotates_and_narrows(sqlite_world: World) -> None:
    services = sqlite_world.services
    first = await _tokens(sqlite_world)
    client = await services.clients.get("web")
    assert client is not None
    now = sqlite_world.clock()
    second = await refresh(
        services, client, {"refresh_token": first["refresh_token"], "scope": "orders:read"}, now
    )
    assert second["refresh_token"] != first["refresh_token"]
    assert second["scope"] == "orders:read"
    assert "id_token" not in second  # narrowed away from openid
    third = await refresh(services, client, {"refresh_token": second["refresh_token"]}, now + 20)
    assert third["scope"] == "openid profile orders:read offline_access", (
        "the family keeps the original scope"
    )
    claims = _claims(third["id_token"])
    assert "nonce" not in claims
    with pytest.raises(InvalidScope):
        await refresh(
            services, client, {"refresh_token": third["refresh_token"], "scope": "orders:write"}, now + 21
        )
    other = await web_client(services, client_id="other", name="Other")
    with pytest.raises(InvalidGrant):
        await refresh(services, other, {"refresh_token": third["refresh_token"]}, now + 22)
    info = await introspect_refresh_token(services, third["refresh_token"], client, now + 23)
    assert info is not None
    assert info["active"]
    assert (await introspect_refresh_token(services, third["refresh_token"], other, now + 23)) == {
        "active": False
    }
    assert (await introspect_refresh_token(services, first["refresh_token"], client, now + 23)) == {
        "active": False
    }
    assert await introspect_refresh_token(services, "unknown", client, now) is None


async def test_opt_in_reuse_window_returns_the_same_pair_then_reuse_revokes(sqlite_world: World) -> None:
    services = sqlite_world.services
    services.settings = services.settings.model_copy(update={"insecure_refresh_reuse_window": 10})
    first = await _tokens(sqlite_world)
    client = await services.clients.get("web")
    assert client is not None
    now = sqlite_world.clock()
    second = await refresh(services, client, {"refresh_token": first["refresh_token"]}, now)
    again = await refresh(services, client, {"refresh_token": first["refresh_token"]}, now + 10)
    assert again == second, "a retry within the grace window gets the same successor pair"
    [grace] = sqlite_world.named("refresh_token.grace_replay")
    assert (grace.outcome, grace.client) == ("success", "web")
    with pytest.raises(InvalidGrant):
        await refresh(services, client, {"refresh_token": first["refresh_token"]}, now + 10.5)
    events = sqlite_world.named("refresh_token.reuse_detected")
    assert len(events) == 1
    assert events[0].details["family_id"]
    # The whole family is dead: the successor and its access token too.
    with pytest.raises(InvalidGrant):
        await refresh(services, client, {"refresh_token": second["refresh_token"]}, now + 11)
    assert not (await services.tokens.introspect(second["access_token"], client, now + 12))["active"]


async def test_refresh_idle_and_absolute_lifetimes(sqlite_world: World) -> None:
    services = sqlite_world.services
    settings = services.settings
    first = await _tokens(sqlite_world)
    client = await services.clients.get("web")
    assert client is not None
    now = sqlite_world.clock()
    with pytest.raises(InvalidGrant):
        await refresh(
            services, client, {"refresh_token": first["refresh_token"]}, now + settings.refresh_token_idle_ttl
        )
    token = first["refresh_token"]
    # Keep using it every 10 days: the idle limit never hits, the absolute one does.
    step = 10 * 86400
    t = now
    while t + step < now + settings.refresh_token_absolute_ttl:
        t += step
        token = (await refresh(services, client, {"refresh_token": token}, t))["refresh_token"]
    with pytest.raises(InvalidGrant):
        await refresh(services, client, {"refresh_token": token}, now + settings.refresh_token_absolute_ttl)


async def test_revoking_a_refresh_token_revokes_its_family(sqlite_world: World) -> None:
    services = sqlite_world.services
    first = await _tokens(sqlite_world)
    client = await services.clients.get("web")
    assert client is not None
    now = sqlite_world.clock()
    assert not await revoke_refresh_token(services, "not-a-token", client, now)
    assert await revoke_refresh_token(services, first["refresh_token"], client, now)
    assert not (await services.tokens.introspect(first["access_token"], client, now + 1))["active"]
    with pytest.raises(InvalidGrant):
        await refresh(services, client, {"refresh_token": first["refresh_token"]}, now + 2)


async def test_disabling_a_user_ends_their_grants(sqlite_world: World) -> None:
    services = sqlite_world.services
    first = await _tokens(sqlite_world)
    client = await services.clients.get("web")
    assert client is not None
    await us.set_disabled(services, "alice")
    with pytest.raises(InvalidGrant):
        await refresh(services, client, {"refresh_token": first["refresh_token"]}, sqlite_world.clock())
    assert not (await services.tokens.introspect(first["access_token"], client))["active"]


@pytest.mark.parametrize("grace", [10, 0])
async def test_twenty_concurrent_refreshes_yield_one_successor(world: World, grace: int) -> None:
    """Keycloak's CVE-2026-1035: N parallel refreshes with one token must rotate it once."""
    services = world.services
    services.settings = services.settings.model_copy(update={"insecure_refresh_reuse_window": grace})
    first = await _tokens(world)
    client = await services.clients.get("web")
    assert client is not None
    now = world.clock()
    results = await asyncio.gather(
        *(refresh(services, client, {"refresh_token": first["refresh_token"]}, now) for _ in range(20)),
        return_exceptions=True,
    )
    bodies = [r for r in results if isinstance(r, dict)]
    errors = [r for r in results if not isinstance(r, dict)]
    assert all(isinstance(e, InvalidGrant) for e in errors), errors
    successors = {body["refresh_token"] for body in bodies}
    assert len(successors) == 1, "exactly one successor was issued"
    if grace:
        assert len(bodies) == 20, "inside the grace window every caller gets the same pair"
        assert (await refresh(services, client, {"refresh_token": successors.pop()}, now + 1))[
            "refresh_token"
        ]
    else:
        assert len(bodies) == 1
        assert world.named("refresh_token.reuse_detected"), "without a window a second use is theft"
    rows = await _family_token_count(world, first["refresh_token"])
    assert rows == (3 if grace else 2)


async def _family_token_count(world: World, token: str) -> int:
    from sqlalchemy import func
    from sqlalchemy import select

    from bastion.storage.sql.schema_people import refresh_tokens

    found = await us.people(world.services).refresh.find(world.services.sealer.hash_secret(token))
    assert found is not None
    async with world.services.stores.db.read() as conn:
        count = await conn.execute(
            select(func.count())
            .select_from(refresh_tokens)
            .where(refresh_tokens.c.family_id == found.family.family_id)
        )
        return int(count.scalar_one())
