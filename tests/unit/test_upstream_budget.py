"""ResilientSender's time budget, on a fake clock: every attempt and retry of one incoming request fits into one
``budget``; read timeouts are not retried unless asked; the settings that drive it.

The stand-in PACS here honours the per-attempt timeouts it is given (it "takes" ``answer_after`` seconds of fake
time, or the read timeout if that is shorter, and then times out), so the clock shows what a client would wait.
The wall-clock version of the same, over real sockets, is tests/api/test_pacs_standin.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from app.errors import UpstreamTimeout, UpstreamUnavailable
from app.pacs.breaker import CircuitBreaker
from app.pacs.request_scope import UPSTREAM_BUDGET, UpstreamBudget
from app.pacs.upstream import ResilientSender
from app.settings import Settings, SettingsError

URL = "http://pacs.test/dicom-web/studies"
TIMEOUT = httpx.Timeout(20.0, connect=3.0).as_dict()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Pacs:
    """A PACS on the fake clock: answers ``status`` after ``answer_after`` seconds, or raises ``fault`` at once."""

    def __init__(self, clock: Clock, *, answer_after: float = 0.0, status: int = 200, fault: Exception | None = None):
        self.clock = clock
        self.answer_after = answer_after
        self.status = status
        self.fault = fault
        self.timeouts: list[dict[str, float]] = []  # what each request was allowed, in order
        self.started: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions["timeout"]
        self.timeouts.append(timeout)
        self.started.append(self.clock.now)
        if self.fault is not None:
            raise self.fault
        if self.answer_after > timeout["read"]:
            self.clock.now += timeout["read"]
            raise httpx.ReadTimeout("no answer")
        self.clock.now += self.answer_after
        return httpx.Response(self.status)


def sender(pacs: Pacs, **options: Any) -> ResilientSender:
    clock = pacs.clock

    async def sleep(seconds: float) -> None:
        clock.now += seconds

    options = {"retries": 1, "backoff": 0.1, "budget": 20.0, "jitter": lambda: 0.5} | options
    return ResilientSender(httpx.MockTransport(pacs), sleep=sleep, clock=clock, **options)


def build() -> httpx.Request:
    return httpx.Request("GET", URL, extensions={"timeout": TIMEOUT})


def send(s: ResilientSender) -> tuple[int, bytes]:
    return asyncio.run(s.send("qido", build, idempotent=True, what="a query"))


class TestBudget:
    def test_each_attempt_waits_at_most_what_is_left(self):
        clock = Clock()
        pacs = Pacs(clock, answer_after=60.0)
        with pytest.raises(UpstreamTimeout):
            send(sender(pacs, budget=30.0, retry_timeouts=True))
        # 20 s (the read timeout), 0.075 s backoff, then the 9.925 s left: 30 s in all, not 2 x 20 s.
        assert [t["read"] for t in pacs.timeouts] == pytest.approx([20.0, 9.925])
        assert pacs.timeouts[1]["connect"] == 3.0 and pacs.timeouts[1]["pool"] == pytest.approx(9.925)
        assert clock.now - 1000 == pytest.approx(30.0)

    def test_a_budget_shorter_than_the_read_timeout_cuts_the_first_attempt(self):
        clock = Clock()
        pacs = Pacs(clock, answer_after=60.0)
        with pytest.raises(UpstreamTimeout):
            send(sender(pacs, budget=3.0))
        assert [t["read"] for t in pacs.timeouts] == [3.0] and clock.now - 1000 == 3.0

    def test_no_retry_unless_the_backoff_and_a_minimal_attempt_fit(self):
        clock = Clock()
        pacs = Pacs(clock, answer_after=60.0)
        # 20 s spent, 0.3 s left: less than 0.075 s backoff + 0.25 s minimal attempt.
        with pytest.raises(UpstreamTimeout):
            send(sender(pacs, budget=20.3, retry_timeouts=True))
        assert len(pacs.timeouts) == 1 and clock.now - 1000 == 20.0
        # 0.35 s left: it fits.
        clock.now = 1000.0
        pacs.timeouts.clear()
        with pytest.raises(UpstreamTimeout):
            send(sender(pacs, budget=20.35, retry_timeouts=True))
        assert [t["read"] for t in pacs.timeouts] == pytest.approx([20.0, 0.275])

    def test_retries_of_5xx_stop_at_the_budget_with_a_504(self):
        clock = Clock()
        pacs = Pacs(clock, answer_after=6.0, status=503)
        s = sender(pacs, retries=5)
        with pytest.raises(UpstreamTimeout):
            send(s)
        # 503 at 6 s, 12.075 s and 18.225 s; the fourth attempt gets the 1.475 s left and times out at 20 s.
        assert [round(t - 1000, 3) for t in pacs.started] == [0, 6.075, 12.225, 18.525]
        assert pacs.timeouts[-1]["read"] == pytest.approx(1.475)
        assert clock.now - 1000 == pytest.approx(20.0)
        assert s.stats.calls == {("qido", "server_error"): 3, ("qido", "timeout"): 1}

    def test_one_budget_per_incoming_request_shared_by_its_calls(self):
        clock = Clock()
        pacs = Pacs(clock, answer_after=15.0)
        s = sender(pacs)

        async def request() -> None:
            UPSTREAM_BUDGET.set(UpstreamBudget())  # what the HTTP layer does for each request
            await s.send("qido", build, idempotent=True, what="a query")  # 15 s
            clock.now += 1.0  # the facade's own work between two calls counts too
            await s.send("qido", build, idempotent=True, what="a query")  # 4 s left: times out

        with pytest.raises(UpstreamTimeout):
            asyncio.run(request())
        assert [t["read"] for t in pacs.timeouts] == [20.0, 4.0]
        assert clock.now - 1000 == 20.0

    def test_a_spent_budget_sends_nothing(self):
        clock = Clock()
        pacs = Pacs(clock)
        breaker = CircuitBreaker(failure_threshold=1, clock=clock)
        s = sender(pacs, breaker=breaker)

        async def request() -> None:
            scope = UpstreamBudget()
            scope.deadline = clock.now  # nothing left
            UPSTREAM_BUDGET.set(scope)
            await s.send("qido", build, idempotent=True, what="a query")

        with pytest.raises(UpstreamTimeout, match="time budget"):
            asyncio.run(request())
        assert pacs.timeouts == [] and s.requests == 0
        assert s.stats.calls == {("qido", "budget_exhausted"): 1} and s.stats.latency_count["qido"] == 0
        assert breaker.state == "closed" and breaker.failures == 0

    def test_outside_a_request_each_call_has_its_own_budget(self):
        clock = Clock()
        pacs = Pacs(clock, answer_after=15.0)
        s = sender(pacs)
        send(s)
        send(s)
        assert [t["read"] for t in pacs.timeouts] == [20.0, 20.0]

    def test_concurrent_calls_of_one_request_share_the_deadline_on_the_real_clock(self):
        async def hung(request: httpx.Request) -> httpx.Response:
            await asyncio.sleep(30)  # a mock transport ignores timeouts: only the budget's own bound ends this
            raise AssertionError("unreachable")

        s = ResilientSender(httpx.MockTransport(hung), retries=1, budget=0.3, retry_timeouts=True)

        async def request() -> list[Any]:
            UPSTREAM_BUDGET.set(UpstreamBudget())
            first = asyncio.create_task(s.send("qido", build, idempotent=True, what="a query"))
            await asyncio.sleep(0.1)
            second = s.send("qido", build, idempotent=True, what="a query")  # starts 0.1 s later, same deadline
            return await asyncio.gather(first, second, return_exceptions=True)

        started = time.perf_counter()
        results = asyncio.run(request())
        elapsed = time.perf_counter() - started
        assert [type(r) for r in results] == [UpstreamTimeout, UpstreamTimeout]
        assert 0.28 <= elapsed < 0.45  # both end at the request's deadline; no retry fits after it
        assert s.requests == 2

    def test_bad_arguments(self):
        transport = httpx.MockTransport(lambda request: httpx.Response(200))
        for options in ({"budget": 0}, {"budget": -1}, {"min_attempt": -1}):
            with pytest.raises(ValueError):
                ResilientSender(transport, **options)  # type: ignore[arg-type]


class TestTimeoutRetries:
    def test_a_read_timeout_is_not_retried_by_default(self):
        clock = Clock()
        pacs = Pacs(clock, fault=httpx.ReadTimeout("slow"))
        s = sender(pacs, retries=3)
        with pytest.raises(UpstreamTimeout):
            send(s)
        assert len(pacs.timeouts) == 1 and s.stats.retries["qido"] == 0

    def test_a_write_timeout_is_not_retried_by_default(self):
        pacs = Pacs(Clock(), fault=httpx.WriteTimeout("slow"))
        with pytest.raises(UpstreamTimeout):
            send(sender(pacs, retries=3))
        assert len(pacs.timeouts) == 1

    def test_retry_timeouts_retries_them(self):
        pacs = Pacs(Clock(), fault=httpx.ReadTimeout("slow"))
        with pytest.raises(UpstreamTimeout):
            send(sender(pacs, retries=3, retry_timeouts=True))
        assert len(pacs.timeouts) == 4

    @pytest.mark.parametrize(
        "fault", [httpx.ConnectTimeout("no SYN-ACK"), httpx.PoolTimeout("pool full"), httpx.ConnectError("refused")]
    )
    def test_nothing_reached_the_pacs_so_it_is_retried(self, fault):
        pacs = Pacs(Clock(), fault=fault)
        with pytest.raises((UpstreamTimeout, UpstreamUnavailable)):
            send(sender(pacs, retries=2))
        assert len(pacs.timeouts) == 3


class TestSettings:
    def settings(self, **options: Any) -> Settings:
        return Settings(dicomweb_url="http://pacs.test/dicom-web", auth_mode="open", **options)

    def test_defaults(self):
        s = self.settings()
        assert (s.upstream_budget, s.upstream_retry_timeouts, s.breaker_initial_reset) == (20.0, False, 1.0)

    @pytest.mark.parametrize("name", ["upstream_budget", "breaker_initial_reset"])
    @pytest.mark.parametrize("value", [0.0, -1.0, float("inf"), float("nan")])
    def test_must_be_finite_and_positive(self, name, value):
        with pytest.raises(SettingsError, match=f"{name} must be a finite, positive number"):
            self.settings(**{name: value})

    def test_from_the_environment(self):
        s = Settings.load(
            {
                "FACADE_DICOMWEB_URL": "http://pacs.test/dicom-web",
                "FACADE_AUTH_MODE": "open",
                "FACADE_UPSTREAM_BUDGET": "7.5",
                "FACADE_UPSTREAM_RETRY_TIMEOUTS": "true",
                "FACADE_BREAKER_INITIAL_RESET": "0.5",
            }
        )
        assert (s.upstream_budget, s.upstream_retry_timeouts, s.breaker_initial_reset) == (7.5, True, 0.5)
        with pytest.raises(SettingsError, match="upstream_retry_timeouts must be true or false"):
            Settings.load(
                {
                    "FACADE_DICOMWEB_URL": "http://pacs.test/dicom-web",
                    "FACADE_AUTH_MODE": "open",
                    "FACADE_UPSTREAM_RETRY_TIMEOUTS": "maybe",
                }
            )
