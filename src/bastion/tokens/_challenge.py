"""``WWW-Authenticate: Bearer …`` values (RFC 6750 §3, quoted strings per RFC 9110 §5.6.4).

Every value is made safe for a header line: no CR, LF or other control character can get
through, whatever the caller passes, so a token's contents can never inject a header.
"""

from __future__ import annotations

import re
from typing import Final

#: RFC 6750 §3: error and error_description "MUST NOT include characters outside the set
#: %x20-21 / %x23-5B / %x5D-7E" (printable ASCII without ``"`` and ``\\``).
_NQSCHAR_OUTSIDE: Final = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
#: RFC 6750 §3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
_SCOPE_TOKEN: Final = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_ERROR_CODE: Final = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+")
_NOT_QDTEXT: Final = re.compile(r"[^\t\x20-\x7e]")


def _quoted(value: str) -> str:
    # RFC 9110 §5.6.4: quoted-pair escapes '"' and '\'; obs-text and CTLs are dropped.
    cleaned = _NOT_QDTEXT.sub("?", value)
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def bearer_challenge(
    realm: str | None = None,
    error: str | None = None,
    description: str | None = None,
    scope: str | None = None,
) -> str:
    """Build a ``WWW-Authenticate`` header value for the Bearer scheme.

    Args:
        realm: The protection space; any text, quoted and escaped.
        error: An RFC 6750 §3.1 code (``invalid_request``, ``invalid_token``,
            ``insufficient_scope``). Leave it out when the request carried no credentials
            (RFC 6750 §3.1: "the resource server SHOULD NOT include an error code").
        description: Human-readable text; characters RFC 6750 §3 forbids are replaced by ``?``.
        scope: Space-delimited scopes needed (for ``insufficient_scope``).

    Returns:
        For example ``Bearer realm="api", error="invalid_token", error_description="…"``.

    Raises:
        ValueError: ``error`` or a scope token holds characters RFC 6750 §3 does not allow;
            both come from code and configuration, never from a request.

    .. versionadded:: 0.1
    """
    params: list[str] = []
    if realm is not None:
        params.append(f"realm={_quoted(realm)}")
    if error is not None:
        if not _ERROR_CODE.fullmatch(error):
            raise ValueError(f"invalid RFC 6750 error code {error!r}")
        params.append(f'error="{error}"')
    if description is not None:
        params.append(f'error_description="{_NQSCHAR_OUTSIDE.sub("?", description)}"')
    if scope is not None:
        tokens = scope.split(" ")
        if not all(_SCOPE_TOKEN.fullmatch(token) for token in tokens):
            raise ValueError(f"invalid scope {scope!r}")
        params.append(f'scope="{scope}"')
    return "Bearer " + ", ".join(params) if params else "Bearer"
