"""Reading requests and writing responses of the admin API: JSON bodies within limits, query
parameters, pages and times."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import TypeVar

import orjson
from pydantic import BaseModel
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from bastion.server.admin.models import Patch
from bastion.server.admin.problems import VALIDATION
from bastion.server.admin.problems import Problem
from bastion.server.admin.problems import invalid
from bastion.storage.audit_protocols import rfc3339

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

#: Items per page unless ``limit`` says otherwise, and the most it may say.
DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def when(ts: float | None) -> str | None:
    """POSIX seconds as RFC 3339 UTC (``2025-01-31T12:00:00Z``), ``None`` stays ``None``."""
    if ts is None:
        return None
    return rfc3339(ts, "seconds")


def json_response(model: BaseModel, status: int = 200) -> Response:
    """``model`` as a JSON response that no cache keeps."""
    return Response(
        model.model_dump_json().encode(),
        status,
        media_type="application/json",
        headers={"cache-control": "no-store", "x-content-type-options": "nosniff"},
    )


def no_content() -> Response:
    """204."""
    return Response(status_code=204, headers={"cache-control": "no-store"})


def _field(loc: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in loc) or "(body)"


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes.

    Raises:
        Problem: 413 when it is (or is announced to be) larger.
    """
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise Problem(413, f"the body is limited to {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, f"the body is limited to {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, model: type[M], limit: int, *, optional: bool = False) -> M:
    """The body as ``model`` (with ``optional``, no body at all is ``{}``).

    Raises:
        Problem: 415 (not JSON), 413 (too large), 400 naming the field (malformed JSON, a wrong
            type, an unknown member, a broken constraint).
    """
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    empty = request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers
    if optional and not media and empty:
        return model.model_validate({})
    if media != "application/json" and not media.endswith("+json"):
        raise Problem(415, "send the body as application/json")
    raw = await read_body(request, limit)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid("(body)", f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise invalid("(body)", "expected a JSON object")
    if issubclass(model, Patch):
        for name, value in data.items():
            if value is None and name in model.model_fields and name not in model.NULLABLE:
                raise invalid(name, "cannot be null (leave it out to keep the value)")
        if not data:
            raise invalid("(body)", "give at least one member to change")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{"field": _field(e["loc"]), "message": e["msg"]} for e in exc.errors()]
        first = errors[0]
        raise Problem(
            400,
            f"{first['field']}: {first['message']}",
            type=VALIDATION,
            title="Invalid request",
            errors=errors,
        ) from None


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within ``[low, high]``.

    Raises:
        Problem: 400 naming the parameter.
    """
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise invalid(name, f"expected an integer from {low} to {high}")
    return int(raw)


def encode_cursor(key: Any) -> str:
    """An opaque cursor for the position after ``key``."""
    return base64.urlsafe_b64encode(orjson.dumps(key)).decode().rstrip("=")


def decode_cursor(raw: str | None) -> Any:
    """The key a cursor of :func:`encode_cursor` holds (``None`` for none).

    Raises:
        Problem: 400 for a cursor this API did not give.
    """
    if raw is None:
        return None
    try:
        return orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError):
        raise invalid("cursor", "not a cursor this API gave") from None


def paginate(
    request: Request, items: Sequence[T], key: Callable[[T], list[Any]]
) -> tuple[list[T], str | None]:
    """A page of ``items`` (already in ``key`` order) after the request's ``cursor``, at most
    ``limit`` long, and the cursor of the next page (``None``: no more)."""
    limit = query_int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    after = decode_cursor(request.query_params.get("cursor"))
    if after is not None:
        if not isinstance(after, list):
            raise invalid("cursor", "not a cursor this API gave")
        try:
            items = [item for item in items if key(item) > after]
        except TypeError:
            raise invalid("cursor", "not a cursor this API gave") from None
    page = list(items[:limit])
    more = len(items) > limit
    return page, encode_cursor(key(page[-1])) if more and page else None
