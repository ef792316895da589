"""Consent: which scopes a user allowed a client, remembered per user, client and scope set."""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence

from bastion.protocol.models import Client
from bastion.protocol.models import User
from bastion.protocol.rfc6749.authorize import AuthorizationRequest
from bastion.protocol.rfc6749.authorize import grant_scope
from bastion.services.container import Services
from bastion.services.users import people
from bastion.services.users import user_scopes
from bastion.storage.people_protocols import Consent

#: Plain-language descriptions shown on the consent page.
SCOPE_DESCRIPTIONS = {
    "openid": "Confirm who you are",
    "profile": "See your name and username",
    "email": "See your e-mail address",
    "offline_access": "Stay signed in when you are away (refresh tokens)",
}


async def scope_to_grant(
    services: Services, client: Client, request: AuthorizationRequest, user: User
) -> tuple[str, ...]:
    """requested ∩ client's allowed ∩ the user's roles' scopes (identity scopes need no role)."""
    return grant_scope(request.scope, client.scopes, await user_scopes(services, user))


async def covers(services: Services, user: User, client: Client, scope: Iterable[str]) -> bool:
    """Whether a remembered consent covers ``scope``."""
    consent = await people(services).consents.get_consent(user.user_id, client.client_id)
    return consent is not None and set(scope) <= consent.scopes


async def remember(services: Services, user: User, client: Client, scope: Iterable[str]) -> None:
    """Remember that ``user`` allowed ``client`` these scopes."""
    granted = await people(services).consents.grant_consent(
        user.user_id, client.client_id, scope, services.clock()
    )
    services.audit.emit(
        "consent.granted",
        actor=user.user_id,
        subject=user.user_id,
        client=client.client_id,
        details={"scope": " ".join(sorted(granted.scopes))},
    )


def describe(scope: Iterable[str]) -> list[dict[str, str]]:
    """View-model rows for the consent page."""
    return [
        {"name": token, "description": SCOPE_DESCRIPTIONS.get(token, f"Access {token}")} for token in scope
    ]


async def list_for_user(services: Services, user: User) -> Sequence[Consent]:
    """Every consent ``user`` gave, by client id."""
    return await people(services).consents.list_consents(user.user_id)


async def revoke(services: Services, user: User, client_id: str) -> bool:
    """Forget ``user``'s consent to ``client_id`` and revoke the refresh tokens the client holds
    for the user, with the access tokens issued from them: the consent no longer stands behind
    them. The next sign-in through the client asks again. ``False`` if there was no consent.
    """
    stores = people(services)
    if not await stores.consents.revoke_consent(user.user_id, client_id):
        return False
    now = services.clock()
    families = await stores.refresh.revoke_subject(user.user_id, now, client_id)
    for family_id in families:
        await services.tokens.revoke_family_access_tokens(family_id, now)
    services.audit.emit(
        "consent.revoked",
        subject=user.user_id,
        client=client_id,
        details={"families_revoked": len(families)},
    )
    return True
