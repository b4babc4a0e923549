"""A circuit breaker for one upstream (the PACS): stop sending requests to a server that keeps failing.

    breaker = CircuitBreaker(failure_threshold=5, reset_after=30.0)
    breaker.acquire()            # raises CircuitOpen (503, Retry-After: the seconds left) while open
    try:
        answer = await send()
    except TransportError:
        breaker.record_failure()
        raise
    except BaseException:        # cancelled: the call proves nothing either way
        breaker.release()
        raise
    breaker.record_success()     # or record_failure() for a 5xx

States (the classic Nygard / Fowler machine, counted in consecutive failures):

    closed ──N consecutive failures──▶ open ──reset_after seconds──▶ half_open ──probe succeeds──▶ closed
                                        ▲                               │
                                        └─────────probe fails───────────┘

* **closed**: every call goes through; a success resets the failure count.
* **open**: calls fail at once with :class:`CircuitOpen`, whose ``Retry-After`` is the remaining open time rounded
  up to whole seconds (RFC 9110 §10.2.3 allows only whole seconds).
* **half_open**: ONE call (the probe) goes through; the others fail fast (``Retry-After: 1``). If the probe's caller
  never reports (it was cancelled and did not call :meth:`release`), another probe is allowed after ``reset_after``,
  so a lost probe cannot keep the breaker half-open forever.

What counts as a failure is the caller's decision (:mod:`app.upstream`: transport errors, timeouts and 5xx; a 4xx is
an answer, so a success). Outcomes that arrive while the breaker is open come from calls that started before it
opened; they are counted but change nothing. Pure: no I/O, no asyncio; the clock is injectable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

from .errors import UpstreamUnavailable

__all__ = ["CircuitBreaker", "CircuitOpen", "State"]

State = Literal["closed", "open", "half_open"]


class CircuitOpen(UpstreamUnavailable):
    """The breaker refused the call without sending it: 503 with ``Retry-After`` = seconds until the next probe."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))
        # FacadeError.headers is a class-level default; this instance carries its own (the app's error handler reads
        # exc.headers). Written through __dict__ because the attribute is declared as a ClassVar on the base.
        vars(self)["headers"] = {"Retry-After": str(self.retry_after)}


class CircuitBreaker:
    """Consecutive-failure circuit breaker; one per upstream server, shared by every client of that server.

    **Parameters:**
    * failure_threshold - consecutive failures that open the circuit (>= 1).
    * reset_after - seconds the circuit stays open before one probe is let through (> 0).
    * clock - monotonic seconds; tests pass a fake.
    * name - what the error message calls the upstream ("the PACS"); never its URL.

    Readable state (for metrics and readiness): :attr:`state`, :attr:`opened_at`, :attr:`consecutive_failures`,
    and the counters :attr:`successes`, :attr:`failures`, :attr:`rejections` (calls refused while open or while a
    probe was out), :attr:`opens` (times the circuit opened, reopenings after a failed probe included).
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = "the PACS",
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if not reset_after > 0:
            raise ValueError("reset_after must be positive")
        self.failure_threshold = failure_threshold
        self.reset_after = reset_after
        self.name = name
        self._clock = clock
        self._open = False
        self._probe_since: float | None = None  # half-open: when the probe went out
        self.opened_at: float | None = None  # clock time the circuit last opened; None while closed
        self.consecutive_failures = 0
        self.successes = 0
        self.failures = 0
        self.rejections = 0
        self.opens = 0

    @property
    def state(self) -> State:
        """``open`` turns into ``half_open`` as soon as ``reset_after`` has passed (the next call is the probe)."""
        if not self._open:
            return "closed"
        if self._probe_since is not None or self._remaining() <= 0:
            return "half_open"
        return "open"

    def retry_after(self) -> float:
        """Seconds until a call may go through again: 0 when closed, or when a probe may go now."""
        if not self._open:
            return 0.0
        if self._probe_since is not None:
            return 1.0  # a probe is out and decides soon
        return max(self._remaining(), 0.0)

    def allow(self) -> bool:
        """Take the right to make one call: True when closed, or when this call becomes the half-open probe."""
        if not self._open:
            return True
        now = self._clock()
        if self._probe_since is not None:
            if now - self._probe_since < self.reset_after:
                self.rejections += 1
                return False
            # The probe's caller never reported back (cancelled without release()): let another one try.
        elif self._remaining() > 0:
            self.rejections += 1
            return False
        self._probe_since = now
        return True

    def acquire(self) -> None:
        """:meth:`allow`, raising :class:`CircuitOpen` when refused."""
        if not self.allow():
            raise CircuitOpen(
                f"{self.name} is unavailable (circuit breaker open after repeated failures)", self.retry_after()
            )

    def record_success(self) -> None:
        self.successes += 1
        if self._open and self._probe_since is None:
            return  # a call that started before the circuit opened; the probe decides
        self._open = False
        self._probe_since = None
        self.opened_at = None
        self.consecutive_failures = 0

    def record_failure(self) -> None:
        self.failures += 1
        if self._open:
            if self._probe_since is not None:  # the probe failed: open again for a full period
                self._trip()
            return
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.failure_threshold:
            self._trip()

    def release(self) -> None:
        """The acquired call ended without an outcome (cancelled): a half-open probe slot is given back."""
        if self._open and self._probe_since is not None:
            self._probe_since = None

    def _trip(self) -> None:
        self._open = True
        self._probe_since = None
        self.opened_at = self._clock()
        self.opens += 1

    def _remaining(self) -> float:
        assert self.opened_at is not None
        return self.opened_at + self.reset_after - self._clock()
