"""Each request's audit scope: the request id and client address every event it causes carries."""

from __future__ import annotations

import re
from typing import Final

from bastion.net import TrustedProxies
from bastion.ops.audit_events import RequestScope
from bastion.ops.audit_events import request_scope
from bastion.ops.audit_events import reset_scope
from bastion.tracecontext import trace_id_of
from bastion.types import ASGIApp
from bastion.types import Receive
from bastion.types import Scope
from bastion.types import Send

#: A request id worth recording (the gateway's rule, ``bastion.gateway.headers``).
_REQUEST_ID_RE: Final = re.compile(rb"[A-Za-z0-9._:+/=-]{1,128}")


class AuditScopeMiddleware:
    """Sets the :class:`~bastion.ops.audit_events.RequestScope` of every HTTP request: the
    client address (through ``proxies``), ``X-Request-Id`` when a trusted proxy (the gateway)
    sent one (anyone else's is ignored, as the gateway ignores it), and the trace-id of a valid
    W3C ``traceparent`` (from anyone: it names a trace, it proves nothing)."""

    def __init__(self, app: ASGIApp, proxies: TrustedProxies) -> None:
        self.app = app
        self._proxies = proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id: bytes | None = None
        traceparent: bytes | None = None
        forwarded: list[bytes] = []
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                request_id = value
            elif key == b"traceparent":
                traceparent = value
            elif key == b"x-forwarded-for":
                forwarded.append(value)
        peer = scope.get("client")
        host = peer[0] if peer else "unknown"
        rid = None
        if (
            request_id is not None
            and _REQUEST_ID_RE.fullmatch(request_id)
            and self._proxies
            and self._proxies.is_trusted(host)
        ):
            rid = request_id.decode("ascii")
        scoped = RequestScope(
            request_id=rid,
            address=self._proxies.client_ip(host, forwarded),
            trace_id=trace_id_of(traceparent) if traceparent is not None else None,
        )
        token = request_scope(scoped)
        try:
            await self.app(scope, receive, send)
        finally:
            reset_scope(token)
