"""Helpers that drive the sign-in services the way the endpoints do."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs
from urllib.parse import urlsplit

from bastion.protocol.models import User
from bastion.protocol.rfc6749.authorize import Interaction
from bastion.protocol.rfc7636 import s256
from bastion.services import authorize as az
from bastion.services.users import create_role
from bastion.services.users import create_user

from .support import CHEAP_PASSWORDS
from .support import World

VERIFIER = "verifier-" + "x" * 50
PASSWORD = "correct horse battery"


def authorize_params(**overrides: str | None) -> list[tuple[str, str]]:
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": "web",
        "redirect_uri": "https://app.example/cb",
        "scope": "openid profile orders:read offline_access",
        "state": "st",
        "nonce": "nn",
        "code_challenge": s256(VERIFIER),
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    return [(k, v) for k, v in params.items() if v is not None]


def query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def alice(world: World, *, roles: tuple[str, ...] = ("reader",)) -> User:
    if "reader" in roles:
        await create_role(world.services, "reader", ["orders:read"])
    return await create_user(
        world.services,
        "alice",
        PASSWORD,
        roles=roles,
        email="alice@example.com",
        name="Alice",
        passwords=CHEAP_PASSWORDS,
    )


async def sign_in_for_code(world: World, user: User, **overrides: str | None) -> tuple[str, az.LoginSession]:
    """authorize → login → consent → code; returns the code and the signed-in session."""
    services = world.services
    _, session = await az.new_session(services)
    outcome = await az.authorize(services, authorize_params(**overrides), session)
    assert isinstance(outcome, az.Interact), outcome
    assert outcome.kind is Interaction.LOGIN
    pending = await az.load_pending(services, outcome.pending_id, session)
    assert pending is not None
    _, session = await az.sign_in(services, session, user, world.clock())
    await az.signed_in_for(services, pending, session)
    pending = await az.load_pending(services, outcome.pending_id, session)
    assert pending is not None
    outcome = await az.resume(services, pending, session)
    if isinstance(outcome, az.Interact):
        assert outcome.kind is Interaction.CONSENT
        pending = await az.load_pending(services, outcome.pending_id, session)
        assert pending is not None
        outcome = await az.answer_consent(services, pending, session, allow=True)
    assert isinstance(outcome, az.Redirect), outcome
    params = query(outcome.location)
    assert params["state"] == "st"
    assert params["iss"] == services.settings.issuer
    return params["code"], session


def token_params(code: str, /, **overrides: str) -> dict[str, Any]:
    params = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": "https://app.example/cb",
        "code_verifier": VERIFIER,
        "client_id": "web",
    }
    params.update(overrides)
    return params
