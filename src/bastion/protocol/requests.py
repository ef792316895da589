"""Request parsing shared by every endpoint: strict ``application/x-www-form-urlencoded``.

RFC 6749 §3.1 / §3.2: "Request and response parameters MUST NOT be included more than once."
Parameters sent without a value are treated as omitted (§3.1).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from bastion.protocol.errors import InvalidRequest


def parse_form(body: bytes) -> dict[str, str]:
    """Parse a urlencoded body, refusing repeated parameters and invalid UTF-8.

    Raises:
        InvalidRequest: on a repeated parameter or undecodable body.
    """
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest("the request body is not valid form-urlencoded UTF-8") from exc
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise InvalidRequest(f"parameter {name} is repeated")
        if value != "":
            params[name] = value
    return params


def is_form_content_type(content_type: str | None) -> bool:
    """Whether a Content-Type header names ``application/x-www-form-urlencoded``."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded"
