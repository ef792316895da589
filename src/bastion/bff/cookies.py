"""The BFF's cookies: one session cookie, one short-lived pre-login cookie.

On an ``https`` origin both are ``__Host-`` prefixed, ``Secure``, ``HttpOnly``, ``SameSite=Lax``,
``Path=/`` and carry no ``Domain`` (RFC 6265bis §4.1.3.2: the ``__Host-`` prefix makes the
browser enforce exactly that). On a plain-http loopback demo a browser would drop ``Secure``
cookies, so the prefix and ``Secure`` go, and the app logs a warning at start.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

SESSION = "bastion-bff"
LOGIN = "bastion-bff-login"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class CookiePolicy:
    """How the BFF's cookies are named and flagged for its public origin."""

    secure: bool

    @classmethod
    def for_origin(cls, redirect_uri: str) -> CookiePolicy:
        """``Secure`` and ``__Host-`` for ``https``; plain for an ``http`` loopback host.

        Raises:
            ValueError: an ``http`` origin that is not loopback (cookies would cross the network
                in clear).
        """
        parts = urlsplit(redirect_uri)
        if parts.scheme == "https":
            return cls(secure=True)
        if parts.scheme == "http" and _loopback(parts.hostname or ""):
            return cls(secure=False)
        raise ValueError(f"bff.redirect_uri must be https (or http on a loopback host), got {redirect_uri!r}")

    def name(self, base: str) -> str:
        """The cookie's name: ``__Host-`` prefixed when secure."""
        return f"__Host-{base}" if self.secure else base

    def header(self, base: str, value: str, max_age: int) -> str:
        """A ``Set-Cookie`` value; ``max_age`` 0 deletes the cookie."""
        parts = [f"{self.name(base)}={value}", "Path=/", f"Max-Age={max_age}", "HttpOnly", "SameSite=Lax"]
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts)

    def read(self, cookie_header: str, base: str) -> str | None:
        """The cookie's value from a ``Cookie`` request header, or ``None``."""
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(cookie_header)
        except Exception:  # a malformed header is no cookie at all
            return None
        morsel = jar.get(self.name(base))
        return morsel.value if morsel is not None and morsel.value else None
