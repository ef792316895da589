"""Per-target circuit breaker: closed → open after N failures in a window → half-open probe.

States (the classic breaker, as in Envoy's outlier detection or resilience4j's count window):

* ``closed``: requests flow; failures are timestamped, and ``failures`` of them within
  ``window`` seconds open the breaker.
* ``open``: requests are refused (the client gets 503) until ``open_seconds`` have passed.
* ``half_open``: exactly one probe request is let through. Its success closes the breaker;
  its failure opens it again for another ``open_seconds``. A probe that never reports (its
  client went away) is replaced by another after ``open_seconds``.

:meth:`CircuitBreaker.force_open` opens it from outside for a given time (an alert rule's
``open_circuit`` action), even when failures alone are not counted (``failures = 0``).

Time is a parameter (``now``): the engine passes its loop's monotonic clock.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

__all__ = ["CircuitBreaker"]

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Counts failures of one upstream target and decides whether to try it.

    Args:
        failures: failures within ``window`` that open the breaker (0 disables it).
        window: seconds over which failures are counted.
        open_seconds: how long the breaker stays open before a probe.
    """

    __slots__ = ("_failures", "_open_seconds", "_open_until", "_probing", "_recent", "_window", "state")

    def __init__(self, failures: int = 5, window: float = 10.0, open_seconds: float = 30.0) -> None:
        if failures < 0 or window <= 0 or open_seconds <= 0:
            raise ValueError("breaker failures must be >= 0, window and open_seconds > 0")
        self._failures = failures
        self._window = window
        self._open_seconds = open_seconds
        self._recent: deque[float] = deque()
        self._open_until = 0.0
        self._probing = False
        self.state: State = "closed"

    def allow(self, now: float) -> bool:
        """Whether a request may go to this target now (claims the probe when half-open)."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if now < self._open_until:
                return False
            self.state = "half_open"
            self._probing = False
        if self._probing and now < self._open_until:
            return False
        self._probing = True
        self._open_until = now + self._open_seconds  # deadline of this probe
        return True

    def would_allow(self, now: float) -> bool:
        """Like :meth:`allow`, without claiming the half-open probe."""
        if self.state == "closed":
            return True
        if self.state == "open":
            return now >= self._open_until
        return not self._probing or now >= self._open_until

    def record_success(self, now: float) -> None:
        """A request to the target completed (any status: the target answered).

        A request that was already in flight when the breaker opened does not close it: only the
        half-open probe (or any request after the opening ran out) does."""
        if self.state == "open" and now < self._open_until:
            return
        if self.state != "closed":
            self.state = "closed"
            self._probing = False
            self._recent.clear()

    def record_failure(self, now: float) -> None:
        """A request to the target failed at the transport level or timed out."""
        if self._failures == 0:
            return
        if self.state == "half_open":
            self._trip(now)
            return
        if self.state == "open":
            return
        recent = self._recent
        recent.append(now)
        while recent and recent[0] <= now - self._window:
            recent.popleft()
        if len(recent) >= self._failures:
            self._trip(now)

    def force_open(self, now: float, seconds: float) -> None:
        """Open now for ``seconds`` whatever the failures (an alert's ``open_circuit``); a
        longer opening already in force is kept. A probe follows, as after any opening."""
        until = now + seconds
        if self.state == "open" and self._open_until >= until:
            return
        self.state = "open"
        self._open_until = until
        self._probing = False
        self._recent.clear()

    def _trip(self, now: float) -> None:
        self.state = "open"
        self._open_until = now + self._open_seconds
        self._probing = False
        self._recent.clear()
