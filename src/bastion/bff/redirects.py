"""Where the browser may be sent after sign-in: same-origin relative paths only.

An open redirect after login turns the BFF into a phishing tool, so the ``return_to`` path is
checked strictly (OWASP "Unvalidated Redirects and Forwards"): it must be an absolute path on
this origin. Refused, among others: ``//evil`` and ``/\\evil`` (browsers read both as a
network-path reference), ``https:evil`` and ``javascript:`` (a scheme), and any control or
whitespace character, raw or percent-encoded (``%09``, ``%0a``: browsers strip them, which can
turn ``/%09/evil`` into ``//evil``).
"""

from __future__ import annotations

from urllib.parse import unquote
from urllib.parse import urlsplit

_MAX = 2048


def safe_return_path(value: str) -> str | None:
    """``value`` if it is a safe same-origin relative path, else ``None``."""
    if not value or len(value) > _MAX or not value.startswith("/"):
        return None
    if any(ord(ch) <= 0x20 or ord(ch) >= 0x7F for ch in value):
        return None  # a raw space, control or non-ASCII character: never in a URL we made
    decoded = unquote(value)
    for text in (value, decoded):
        if "\\" in text or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
            return None
        if text.startswith("//"):
            return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return None
    return value
