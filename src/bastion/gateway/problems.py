"""Error answers the engine writes itself, as RFC 9457 problem details.

RFC 9457 §3.1: ``"about:blank"`` as ``type`` "indicates that the problem has no additional
semantics beyond that of the HTTP status code", and then ``title`` "SHOULD be the same as the
recommended HTTP status phrase". ``detail`` is a fixed sentence per situation: never an
address, a host name or an exception text (the gateway hides its topology).
"""

from __future__ import annotations

from http import HTTPStatus

import orjson

from bastion.gateway.contract import Headers

__all__ = ["PROBLEM_JSON", "problem"]

PROBLEM_JSON = b"application/problem+json"
_cache: dict[tuple[int, str], tuple[Headers, bytes]] = {}


def problem(status: int, detail: str) -> tuple[Headers, bytes]:
    """The headers and body of a problem-details answer (cached: the inputs are constants).

    Args:
        status: the HTTP status code.
        detail: a fixed, client-safe sentence.

    Returns:
        ``(headers, body)``; the headers carry ``content-type`` and ``cache-control``.
    """
    key = (status, detail)
    cached = _cache.get(key)
    if cached is None:
        try:
            title = HTTPStatus(status).phrase
        except ValueError:
            title = "Error"
        body = orjson.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail})
        cached = ([(b"content-type", PROBLEM_JSON), (b"cache-control", b"no-store")], body)
        if len(_cache) < 256:
            _cache[key] = cached
    return list(cached[0]), cached[1]
