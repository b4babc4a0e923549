"""A circuit breaker for one upstream (the PACS): stop sending requests to a server that keeps failing.

    breaker = CircuitBreaker(failure_threshold=5, reset_after=30.0, initial_reset=1.0)
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

    closed ──N consecutive failures──▶ open ──period seconds──▶ half_open ──probe succeeds──▶ closed
                                        ▲                           │
                                        └──probe fails: period x 2──┘

* **closed**: every call goes through; a success resets the failure count.
* **open**: calls fail at once with :class:`CircuitOpen`, whose ``Retry-After`` is the remaining open time rounded
  up to whole seconds (RFC 9110 §10.2.3 allows only whole seconds).
* **half_open**: ONE call (the probe) goes through; the others fail fast (``Retry-After: 1``). If the probe's caller
  never reports (it was cancelled and did not call :meth:`release`), another probe is allowed after
  ``max(period, probe_timeout)``: not before the probe could still be running (``probe_timeout``, by default
  ``reset_after``, is meant to be the longest a call can take), and never more often than the open period allows,
  so a lost probe cannot keep the breaker half-open forever.

The open period is adaptive (exponential backoff of the probes, as in gRPC's connection backoff or Envoy's outlier
ejection): the first open lasts ``initial_reset`` seconds, each failed probe doubles it up to ``reset_after``, and a
successful probe closes the circuit and starts the next outage at ``initial_reset`` again. So a PACS back after a
short outage is used again within about ``initial_reset`` seconds, while a long-dead PACS is probed once every
``reset_after`` seconds; in both cases a refused call costs no I/O. ``initial_reset=None``: a fixed period,
``reset_after``.

What counts as a failure is the caller's decision (:mod:`app.pacs.upstream`: transport errors, timeouts and 5xx; a 4xx
is
an answer, so a success). Outcomes that arrive while the breaker is open come from calls that started before it
opened; they are counted but change nothing. Pure: no I/O, no asyncio; the clock is injectable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

from ..errors import UpstreamUnavailable

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
    * reset_after - the longest the circuit stays open before one probe is let through (> 0).
    * initial_reset - the open period after the first trip (> 0; capped at ``reset_after``), doubled by each failed
      probe up to ``reset_after``; None: always ``reset_after``.
    * probe_timeout - seconds after which a probe that never reported is presumed lost (> 0; None: ``reset_after``);
      give the longest a call can take (the upstream time budget), so that a slow probe is not taken for a lost one.
    * clock - monotonic seconds; tests pass a fake.
    * name - what the error message calls the upstream ("the PACS"); never its URL.

    Readable state (for metrics and readiness): :attr:`state`, :attr:`opened_at`, :attr:`period` (the current or
    next open period), :attr:`consecutive_failures`,
    and the counters :attr:`successes`, :attr:`failures`, :attr:`rejections` (calls refused while open or while a
    probe was out), :attr:`opens` (times the circuit opened, reopenings after a failed probe included).
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_after: float = 30.0,
        initial_reset: float | None = None,
        probe_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "the PACS",
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        for value in (reset_after, initial_reset, probe_timeout):
            if value is not None and not 0 < value < math.inf:
                raise ValueError("reset_after, initial_reset and probe_timeout must be positive and finite")
        self.failure_threshold = failure_threshold
        self.reset_after = reset_after
        self.initial_reset = min(initial_reset, reset_after) if initial_reset is not None else reset_after
        self.probe_timeout = probe_timeout if probe_timeout is not None else reset_after
        self.period = self.initial_reset  # how long the circuit stays open (next time it opens, while closed)
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
        """``open`` turns into ``half_open`` as soon as the open period has passed (the next call is the probe)."""
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
            if now - self._probe_since < max(self.period, self.probe_timeout):
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
        self.period = self.initial_reset  # the next outage starts with a short period again

    def record_failure(self) -> None:
        self.failures += 1
        if self._open:
            if self._probe_since is not None:  # the probe failed: open again, for twice as long (up to reset_after)
                self.period = min(self.period * 2, self.reset_after)
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
        return self.opened_at + self.period - self._clock()
