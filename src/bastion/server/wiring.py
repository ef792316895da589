"""Where the sign-in part (authorization code, refresh tokens, OpenID Connect) plugs into the
authorization server: the token-endpoint grants it handles and the routes it serves."""

from __future__ import annotations

from starlette.routing import BaseRoute

from bastion.services.container import Services


def install(services: Services) -> None:
    """Register sign-in grant handlers and token kinds on ``services``."""


def routes(services: Services) -> list[BaseRoute]:
    """The interactive routes (authorize, login, consent, userinfo, discovery)."""
    return []
