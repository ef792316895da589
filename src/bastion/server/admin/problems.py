"""Problem details (RFC 9457): the one form of every error the admin API answers.

Endpoints raise :class:`Problem`; the app's exception handlers turn it, Starlette's own HTTP
errors (404, 405) and anything unexpected into ``application/problem+json``. A problem never
carries a traceback or an exception's text: an unexpected failure is a bare 500, logged.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any
from typing import Final

import orjson
from starlette.responses import Response

MEDIA_TYPE: Final = "application/problem+json"

#: The ``type`` of a request whose body or parameters break the schema (``errors`` names each field).
VALIDATION: Final = "urn:bastion:problem:validation"
#: The ``type`` of a well-formed request the service refuses (a rule of clients, users or bans).
RULE: Final = "urn:bastion:problem:rule"
#: The ``type`` of a request without a valid admin token (RFC 6750 challenge beside it).
UNAUTHORIZED: Final = "urn:bastion:problem:unauthorized"

_HEADERS: Final = {"cache-control": "no-store", "x-content-type-options": "nosniff"}


class Problem(Exception):
    """An error answered as RFC 9457 problem details.

    ``type`` defaults to ``about:blank`` ("no additional semantics beyond that of the HTTP
    status code", RFC 9457 §4.2.1), whose ``title`` is the status phrase.
    """

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        type: str = "about:blank",
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or HTTPStatus(status).phrase)
        self.status = status
        self.detail = detail
        self.type = type
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers or {}
        self.extensions = extensions

    def body(self) -> dict[str, Any]:
        """The problem object (``type``, ``title``, ``status``, ``detail``, extensions)."""
        out: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail is not None:
            out["detail"] = self.detail
        out.update(self.extensions)
        return out

    def response(self) -> Response:
        """The HTTP response."""
        return Response(
            orjson.dumps(self.body()),
            self.status,
            headers={**_HEADERS, **self.headers},
            media_type=MEDIA_TYPE,
        )


def invalid(field: str, message: str) -> Problem:
    """A 400 naming one bad field."""
    return Problem(
        400,
        f"{field}: {message}",
        type=VALIDATION,
        title="Invalid request",
        errors=[{"field": field, "message": message}],
    )


def refused(message: str, status: int = 400) -> Problem:
    """A request the service refused by one of its rules (400) or a conflict (409)."""
    return Problem(status, message, type=RULE if status == 400 else "about:blank")
