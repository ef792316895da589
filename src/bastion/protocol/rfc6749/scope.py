"""Scope parameters (RFC 6749 §3.3).

``scope = scope-token *( SP scope-token )``, ``scope-token = 1*( %x21 / %x23-5B / %x5D-7E )``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from bastion.protocol.errors import InvalidScope

# Matched with fullmatch: ``$`` would accept a token ending in a newline.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def parse_scope(value: str | None) -> list[str]:
    """Split a scope parameter into its tokens, in order, without duplicates.

    Raises:
        InvalidScope: a token has characters §3.3 does not allow, or the separators are not
            single spaces.
    """
    if value is None:
        return []
    tokens = value.split(" ")
    if any(not _SCOPE_TOKEN.fullmatch(token) for token in tokens):
        raise InvalidScope("the scope parameter is malformed")
    return list(dict.fromkeys(tokens))


def format_scope(scopes: Iterable[str]) -> str:
    """Join scopes in a stable (sorted) order."""
    return " ".join(sorted(set(scopes)))


def narrow(
    requested: str | None, allowed: Iterable[str], *, default: Iterable[str] | None = None
) -> list[str]:
    """The scopes to grant: the request, which must be a subset of ``allowed``.

    With no ``scope`` parameter the ``default`` (else everything allowed) is granted (§3.3:
    "the authorization server MUST either process the request using a pre-defined default
    value or fail the request").

    Raises:
        InvalidScope: a requested scope is not allowed.
    """
    allowed_set = set(allowed)
    tokens = parse_scope(requested)
    if not tokens:
        return sorted(allowed_set if default is None else set(default) & allowed_set)
    refused = [token for token in tokens if token not in allowed_set]
    if refused:
        raise InvalidScope(f"scope not allowed for this client: {' '.join(refused)}")
    return tokens
