"""One request/response cycle of a client connection: ask the handler, then reply or forward.

An :class:`Exchange` is created by the front (``server.py``) for each request head. It calls the
policy layer's handler once, then either writes the :class:`~bastion.gateway.contract.Reply` or
proxies to an upstream for a :class:`~bastion.gateway.contract.Forward`, streaming the request
body up and the response body down without buffering either. Everything is driven by
callbacks; a task exists only while the handler awaits or a new upstream connection opens.

Invariants:

* The front hands request-body events to the exchange only while :attr:`Exchange.accepting`;
  otherwise it stops reading the client (back-pressure and "don't read before deciding").
* ``100 Continue`` is written only when a Forward is bound to an upstream connection and the
  body is about to be read (RFC 9110 §10.1.1).
* Retries happen only before any response byte arrived and before any request-body byte was
  sent: once on a fresh connection when a reused one turned out stale (idempotent methods),
  and once on another target when ``Forward.retry`` allows it.
* ``on_complete`` is called exactly once, after the last byte or the failure.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING
from typing import Final

from bastion.gateway.contract import Decision
from bastion.gateway.contract import Forward
from bastion.gateway.contract import Handler
from bastion.gateway.contract import Headers
from bastion.gateway.contract import Outcome
from bastion.gateway.contract import Reply
from bastion.gateway.contract import RequestHead
from bastion.gateway.http1 import Request
from bastion.gateway.http1 import Response
from bastion.gateway.http1 import encode_request_head
from bastion.gateway.http1 import strip_hop_by_hop
from bastion.gateway.problems import problem
from bastion.gateway.upstream import NoTargetError
from bastion.gateway.upstream import PoolTimeoutError
from bastion.gateway.upstream import Target
from bastion.gateway.upstream import UpstreamConnection
from bastion.gateway.upstream import UpstreamGroup

if TYPE_CHECKING:
    from bastion.gateway.server import FrontProtocol

__all__ = ["Exchange"]

_log = logging.getLogger("bastion.gateway")

#: RFC 9110 §9.2.2.
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_CRLF: Final = b"\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"
_DETAIL: Final = {
    500: "The gateway failed to handle the request.",
    502: "The upstream service could not be reached or sent an invalid response.",
    503: "No upstream service is available.",
    504: "The upstream service did not answer in time.",
}


class Exchange:
    """The state of one request/response cycle (see the module docstring)."""

    __slots__ = (
        "_activity",
        "_body_sent",
        "_connect_task",
        "_decision",
        "_done",
        "_error",
        "_forward",
        "_fresh_retry_used",
        "_group",
        "_head_bytes",
        "_held",
        "_other_retry_used",
        "_pending",
        "_request_sent",
        "_response",
        "_status",
        "_target",
        "_timer",
        "_upstream",
        "_upstream_started",
        "accepting",
        "bytes_sent",
        "draining",
        "front",
        "head",
        "request",
    )

    def __init__(self, front: FrontProtocol, request: Request, head: RequestHead) -> None:
        self.front = front
        self.request = request
        self.head = head
        #: Whether the front may hand request-body events to this exchange now.
        self.accepting = False
        #: A Reply was written and the unread body is being discarded.
        self.draining = False
        self.bytes_sent = 0
        self._decision: Decision | None = None
        self._forward: Forward | None = None
        self._group: UpstreamGroup | None = None
        self._pending: asyncio.Future[Decision] | None = None
        self._done = False
        self._status = 0
        self._error: str | None = None
        self._target: Target | None = None
        self._upstream: UpstreamConnection | None = None
        self._upstream_started: float | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._response: Response | None = None
        self._head_bytes = b""
        #: A response head not yet written: it goes out with the first body bytes (one send).
        self._held = b""
        self._body_sent = 0
        self._request_sent = False
        self._activity = 0.0
        self._fresh_retry_used = False
        self._other_retry_used = False

    # -- deciding ----------------------------------------------------------------------------

    def run(self, handler: Handler) -> None:
        """Ask the handler; act at once on a plain decision, later on an awaitable one."""
        try:
            result = handler(self.head)
        except Exception:
            _log.exception("gateway handler failed")
            self._answer_problem(500, "handler_error")
            return
        if type(result) is Forward or type(result) is Reply:
            self._decide(result)
            return
        if isinstance(result, Forward | Reply):
            self._decide(result)
            return
        pending = asyncio.ensure_future(result)
        self._pending = pending
        pending.add_done_callback(self._decided)

    def _decided(self, future: asyncio.Future[Decision]) -> None:
        self._pending = None
        if self._done or future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            _log.error("gateway handler failed", exc_info=exc)
            self._answer_problem(500, "handler_error")
            return
        self._decide(future.result())
        # Body bytes that arrived while the handler was awaiting were queued by the front: hand
        # them over now (a pooled upstream connection binds at once, nothing else would pump).
        if not self._done:
            self.front.pump()

    def _decide(self, decision: Decision) -> None:
        self._decision = decision
        if type(decision) is Reply:
            self._reply(decision)
        elif isinstance(decision, Forward) and isinstance(decision.upstream, UpstreamGroup):
            if decision.max_body is not None:
                self.front.conn.limit_body(decision.max_body)
            self._forward = decision
            self._group = decision.upstream
            self._start_forward(decision)
        else:
            _log.error("gateway handler returned %r, not a Reply or a Forward of an UpstreamGroup", decision)
            self._answer_problem(500, "handler_error")

    # -- answering locally -------------------------------------------------------------------

    def _reply(self, reply: Reply) -> None:
        self._write_local(reply.status, reply.headers, reply.body)

    def _answer_problem(self, status: int, error: str) -> None:
        self._error = error
        headers, body = problem(status, _DETAIL[status])
        self._write_local(status, headers, body)

    def _write_local(self, status: int, headers: Headers, body: bytes) -> None:
        front = self.front
        conn = front.conn
        request = self.request
        close = front.closing
        if not conn.request_complete:
            # The body was not read: discard a small declared one to keep the connection;
            # otherwise close (an Expect: 100-continue client is waiting to be told).
            small = request.content_length is not None and request.content_length <= front.limits.drain_limit
            if small and not request.expect_continue and not close:
                self.draining = True
            else:
                close = True
        try:
            head = conn.start_response(
                status, self._with_date(headers), content_length=len(body), close=close
            )
        except ValueError:
            _log.exception("gateway reply has an invalid header")
            status = 500
            headers, body = problem(500, _DETAIL[500])
            head = conn.start_response(
                status, self._with_date(headers), content_length=len(body), close=close
            )
        self._status = status
        if conn.response_has_body and body:
            front.writelines([head, body])
            self.bytes_sent = len(body)
        else:
            front.write(head)
        if self.draining:
            self.accepting = True
            front.pump()
        else:
            self._finish()

    def _with_date(self, headers: Headers) -> Headers:
        for name, _ in headers:
            if name == b"date":
                return headers
        return [*headers, (b"date", self.front.server.date())]

    # -- forwarding --------------------------------------------------------------------------

    def _start_forward(self, forward: Forward) -> None:
        loop = self.front.loop
        now = loop.time()
        first = min(self.head.started + forward.total_timeout, now + forward.read_timeout)
        self._timer = loop.call_at(first, self._on_timer)
        self._acquire(forward, now, exclude=None, fresh=False)

    def _acquire(self, forward: Forward, now: float, *, exclude: Target | None, fresh: bool) -> None:
        group = self._group
        if group is None:
            return
        if fresh and self._target is not None:
            target = self._target
        else:
            try:
                target = group.select(now, exclude)
            except NoTargetError as exc:
                self._answer_problem(503, exc.reason)
                return
        self._target = target
        if not fresh:
            conn = target.take_idle(now)
            if conn is not None:
                self._bind(conn)
                return
        deadline = min(now + forward.connect_timeout, self.head.started + forward.total_timeout)
        self._connect_task = self.front.loop.create_task(self._connect(target, deadline))

    async def _connect(self, target: Target, deadline: float) -> None:
        try:
            conn = await target.connect(deadline)
        except PoolTimeoutError:
            self._connect_task = None
            if not self._done:
                self._answer_problem(503, "upstream_busy")
            return
        except (OSError, TimeoutError) as exc:
            self._connect_task = None
            if not self._done:
                now = self.front.loop.time()
                target.breaker.record_failure(now)
                if isinstance(exc, TimeoutError):
                    self._retry_elsewhere_or_fail(504, "upstream_timeout")
                else:
                    self._retry_elsewhere_or_fail(502, "upstream_connect")
            return
        self._connect_task = None
        if self._done:
            conn.release(reusable=True)
            return
        self._bind(conn)
        self.front.pump()

    def _retry_elsewhere_or_fail(self, status: int, error: str) -> None:
        forward = self._forward
        if forward is None:
            return
        target = self._target
        now = self.front.loop.time()
        if (
            forward.retry
            and not self._other_retry_used
            and self._body_sent == 0
            and target is not None
            and self._group is not None
            and self._group.has_alternative(now, target)
        ):
            self._other_retry_used = True
            self._acquire(forward, now, exclude=target, fresh=False)
            return
        self._answer_problem(status, error)

    def _bind(self, conn: UpstreamConnection) -> None:
        forward = self._forward
        if forward is None:
            return
        request = self.request
        self._upstream = conn
        conn.begin(self, head_request=request.method == b"HEAD")
        loop = self.front.loop
        self._activity = loop.time()
        if self._upstream_started is None:
            self._upstream_started = self._activity
        head = self._head_bytes
        if not head:
            host = request.host
            for name, value in forward.headers:
                if name == b"host":
                    host = value
                    break
            try:
                head = encode_request_head(
                    request.method,
                    forward.target,
                    forward.headers,
                    host if host is not None else conn.target.address.encode(),
                    content_length=request.content_length,
                    chunked=request.chunked,
                    dropped=frozenset() if forward.connection_filtered else request.connection,
                )
            except ValueError:
                _log.exception("gateway forward has an invalid header")
                conn.release(reusable=False)
                self._upstream = None
                self._answer_problem(500, "handler_error")
                return
            self._head_bytes = head
        conn.write(head)
        if self.front.writing_paused:
            conn.pause_reading()
        if request.has_body:
            if request.expect_continue and not self.front.conn.response_started:
                self.front.write(_CONTINUE)
            self.accepting = True
        else:
            self._request_sent = True

    def request_data(self, data: bytes) -> None:
        """A slice of the client's request body."""
        if self.draining:
            return
        conn = self._upstream
        if conn is None:
            return
        self._body_sent += len(data)
        self._activity = self.front.loop.time()
        if self.request.chunked:
            conn.writelines([b"%x\r\n" % len(data), data, _CRLF])
        else:
            conn.write(data)

    def request_end(self) -> None:
        """The client's request body is complete."""
        self.accepting = False
        if self.draining:
            self.draining = False
            self._finish()
            return
        conn = self._upstream
        if conn is not None and self.request.chunked:
            conn.write(_LAST_CHUNK)
        self._request_sent = True

    # -- upstream events (UpstreamListener) --------------------------------------------------

    def upstream_response(self, response: Response) -> None:
        forward = self._forward
        if forward is None:
            return
        self._response = response
        self._activity = self.front.loop.time()
        status = response.status
        headers = strip_hop_by_hop(response.headers)
        try:
            if forward.response_headers is not None:
                headers = forward.response_headers(status, headers)
            headers = self._with_date(headers)
            front = self.front
            conn = front.conn
            if not conn.request_complete:
                # The upstream answered before the whole body arrived: stop forwarding it,
                # and end both connections after this response.
                self.accepting = False
            content_length = response.content_length if not response.chunked else None
            head = conn.start_response(
                status,
                headers,
                content_length=content_length,
                close=front.closing or not conn.request_complete,
            )
        except Exception:
            _log.exception("gateway response_headers hook failed")
            self._drop_upstream(failure=False)
            self._answer_problem(502, "response_headers_error")
            return
        self._status = status
        self._held = head

    def upstream_data(self, data: bytes) -> None:
        self._activity = self.front.loop.time()
        parts = self.front.conn.frame_data(data)
        if parts:
            self.bytes_sent += len(data)
        if self._held:
            parts.insert(0, self._held)
            self._held = b""
        if parts:
            self.front.writelines(parts)

    def upstream_flush(self) -> None:
        if self._held:
            self.front.write(self._held)
            self._held = b""

    def upstream_end(self) -> None:
        front = self.front
        end = front.conn.end_response()
        held = self._held
        if held:
            self._held = b""
            front.write(held + end if end else held)
        elif end:
            front.write(end)
        conn = self._upstream
        response = self._response
        self._upstream = None
        if conn is not None:
            now = front.loop.time()
            conn.release(
                reusable=response is not None and response.keep_alive and self._request_sent, now=now
            )
            if self._target is not None:
                self._target.breaker.record_success(now)
        self._finish()

    def upstream_failed(self, reason: str) -> None:
        conn = self._upstream
        self._upstream = None
        if conn is None or self._done:
            return
        conn.close()
        forward = self._forward
        if forward is None:
            return
        now = self.front.loop.time()
        untouched = not conn.reader.received_any and self._body_sent == 0
        if self.front.conn.response_started:
            self._record_failure(now)
            self._abort(reason)
            return
        if (
            untouched
            and conn.uses > 1
            and not self._fresh_retry_used
            and reason == "upstream_closed"
            and self.request.method in IDEMPOTENT
        ):
            # A pooled connection the upstream had closed (RFC 9112 §9.3.1 allows retrying
            # an idempotent request automatically): once more on a fresh connection.
            self._fresh_retry_used = True
            self.accepting = False
            self._acquire(forward, now, exclude=None, fresh=True)
            return
        self._record_failure(now)
        if untouched:
            self._retry_elsewhere_or_fail(502, reason)
        else:
            self._answer_problem(502, reason)

    def upstream_pause_writing(self) -> None:
        if not self.front.conn.request_complete:
            self.accepting = False

    def upstream_resume_writing(self) -> None:
        if self._upstream is not None and not self.front.conn.request_complete:
            self.accepting = True
            self._activity = self.front.loop.time()
            self.front.pump()

    # -- client events -----------------------------------------------------------------------

    def client_pause_writing(self) -> None:
        """The client's write buffer is above the high-water mark: stop reading upstream."""
        if self._upstream is not None:
            self._upstream.pause_reading()

    def client_resume_writing(self) -> None:
        """The client caught up: read the upstream again."""
        if self._upstream is not None:
            self._activity = self.front.loop.time()
            self._upstream.resume_reading()

    def client_lost(self) -> None:
        """The client connection closed before the exchange finished."""
        if self._done:
            return
        if self._pending is not None:
            self._pending.cancel()
        if self._connect_task is not None:
            self._connect_task.cancel()
            self._connect_task = None
        self._drop_upstream(failure=False)
        if not self._status:
            self._status = 499
        self._error = "client_closed"
        self._complete()

    def client_timeout(self) -> None:
        """The client stopped sending its request body."""
        if self._done:
            return
        self._drop_upstream(failure=False)
        self._error = "client_timeout"
        if self.front.conn.response_started:
            self._abort("client_timeout")
            return
        self.draining = False
        headers, body = problem(408, "The request was not received in time.")
        self._write_local(408, headers, body)

    def client_rejected(self, status: int, detail: str) -> None:
        """The request body broke a rule (too large, malformed chunking)."""
        if self._done:
            return
        self._drop_upstream(failure=False)
        self._error = "client_invalid"
        if self.front.conn.response_started:
            self._abort("client_invalid")
            return
        self.draining = False
        headers, body = problem(status, detail)
        self._write_local(status, headers, body)

    # -- timers and endings ------------------------------------------------------------------

    def _on_timer(self) -> None:
        self._timer = None
        if self._done:
            return
        forward = self._forward
        if forward is None:
            return
        loop = self.front.loop
        now = loop.time()
        total_deadline = self.head.started + forward.total_timeout
        if now < total_deadline:
            if self._upstream is None or self.front.writing_paused or not self._request_sent:
                # Connecting (bounded by its own timeout), held back by a slow client, or
                # still streaming the body: the read timeout does not run.
                deadline = min(total_deadline, now + forward.read_timeout)
                self._timer = loop.call_at(deadline, self._on_timer)
                return
            read_deadline = self._activity + forward.read_timeout
            if now < read_deadline:
                self._timer = loop.call_at(min(total_deadline, read_deadline), self._on_timer)
                return
        if self._connect_task is not None:
            self._connect_task.cancel()
            self._connect_task = None
        self._drop_upstream(failure=True)
        self._error = "upstream_timeout"
        if self.front.conn.response_started:
            self._abort("upstream_timeout")
            return
        self._answer_problem(504, "upstream_timeout")

    def _record_failure(self, now: float) -> None:
        if self._target is not None:
            self._target.breaker.record_failure(now)

    def _drop_upstream(self, *, failure: bool) -> None:
        conn = self._upstream
        self._upstream = None
        self.accepting = False
        if conn is not None:
            conn.close()
            if failure:
                self._record_failure(self.front.loop.time())

    def _abort(self, error: str) -> None:
        """The response cannot be completed: report, then drop the client connection."""
        self._error = error
        self._drop_upstream(failure=False)
        self._complete()
        self.front.abort()

    def _finish(self) -> None:
        if self._done:
            return
        self._complete()
        self.front.exchange_done(self)

    def _complete(self) -> None:
        self._done = True
        self.accepting = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        decision = self._decision
        callback = decision.on_complete if decision is not None else None
        if callback is None:
            return
        loop_time = self.front.loop.time()
        upstream_seconds = None
        if self._upstream_started is not None:
            upstream_seconds = loop_time - self._upstream_started
        target = self._target
        outcome = Outcome(
            status=self._status,
            bytes_sent=self.bytes_sent,
            total_seconds=loop_time - self.head.started,
            upstream_seconds=upstream_seconds,
            upstream=target.address if target is not None and self._response is not None else None,
            error=self._error,
        )
        try:
            callback(outcome)
        except Exception:
            _log.exception("gateway on_complete hook failed")
