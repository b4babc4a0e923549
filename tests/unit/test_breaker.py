"""app.pacs.breaker.CircuitBreaker: the closed → open → half_open → closed/open state machine, on a fake clock, with a
fixed open period (``initial_reset=None``) and with the adaptive one (short first, doubled per failed probe)."""

from __future__ import annotations

import pytest

from app.errors import UpstreamError, UpstreamUnavailable
from app.pacs.breaker import CircuitBreaker, CircuitOpen


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def tripped(clock: Clock, *, threshold: int = 3, reset_after: float = 30.0) -> CircuitBreaker:
    breaker = CircuitBreaker(failure_threshold=threshold, reset_after=reset_after, clock=clock)
    for _ in range(threshold):
        breaker.acquire()
        breaker.record_failure()
    assert breaker.state == "open"
    return breaker


class TestClosed:
    def test_starts_closed_and_lets_calls_through(self, clock):
        breaker = CircuitBreaker(clock=clock)
        assert breaker.state == "closed" and breaker.opened_at is None
        for _ in range(100):
            breaker.acquire()
            breaker.record_success()
        assert (breaker.successes, breaker.failures, breaker.rejections, breaker.opens) == (100, 0, 0, 0)
        assert breaker.retry_after() == 0

    def test_opens_after_n_consecutive_failures(self, clock):
        breaker = CircuitBreaker(failure_threshold=3, clock=clock)
        for expected in (1, 2):
            breaker.acquire()
            breaker.record_failure()
            assert breaker.state == "closed" and breaker.consecutive_failures == expected
        clock.now = 1005.0
        breaker.acquire()
        breaker.record_failure()
        assert breaker.state == "open"
        assert breaker.opened_at == 1005.0
        assert breaker.opens == 1 and breaker.failures == 3

    def test_a_success_resets_the_count(self, clock):
        breaker = CircuitBreaker(failure_threshold=3, clock=clock)
        for outcome in ("f", "f", "s", "f", "f", "s", "f", "f"):
            breaker.acquire()
            breaker.record_failure() if outcome == "f" else breaker.record_success()
        assert breaker.state == "closed" and breaker.consecutive_failures == 2

    def test_threshold_one(self, clock):
        breaker = CircuitBreaker(failure_threshold=1, clock=clock)
        breaker.record_failure()
        assert breaker.state == "open"

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"failure_threshold": 0},
            {"reset_after": 0},
            {"reset_after": -1},
            {"reset_after": float("inf")},
            {"reset_after": float("nan")},
            {"initial_reset": 0},
            {"initial_reset": -1},
            {"initial_reset": float("nan")},
            {"probe_timeout": 0},
            {"probe_timeout": float("inf")},
        ],
    )
    def test_bad_arguments(self, kwargs):
        with pytest.raises(ValueError):
            CircuitBreaker(**kwargs)


class TestOpen:
    def test_fails_fast_with_a_503_and_the_remaining_time_rounded_up(self, clock):
        breaker = tripped(clock, reset_after=30.0)
        clock.now += 0.5
        with pytest.raises(CircuitOpen) as info:
            breaker.acquire()
        exc = info.value
        assert isinstance(exc, UpstreamUnavailable) and isinstance(exc, UpstreamError)
        assert exc.status == 503 and exc.code == "transient"
        assert exc.retry_after == 30 and exc.headers == {"Retry-After": "30"}  # 29.5 s left
        assert "http" not in exc.message
        clock.now += 29.2  # 0.3 s left
        with pytest.raises(CircuitOpen) as info:
            breaker.acquire()
        assert info.value.headers == {"Retry-After": "1"}
        assert breaker.rejections == 2

    def test_the_class_default_retry_after_is_untouched(self, clock):
        breaker = tripped(clock)
        with pytest.raises(CircuitOpen):
            breaker.acquire()
        assert UpstreamUnavailable.headers == {"Retry-After": "5"}
        assert UpstreamUnavailable("down").headers == {"Retry-After": "5"}

    def test_allow_is_the_non_raising_form(self, clock):
        breaker = tripped(clock)
        assert breaker.allow() is False
        assert breaker.rejections == 1

    def test_outcomes_of_calls_started_before_opening_change_nothing(self, clock):
        breaker = tripped(clock)
        opened_at = breaker.opened_at
        clock.now += 10
        breaker.record_success()
        breaker.record_failure()
        assert breaker.state == "open" and breaker.opened_at == opened_at and breaker.opens == 1
        assert breaker.retry_after() == pytest.approx(20.0)


class TestHalfOpen:
    def test_after_reset_after_one_probe_goes_through(self, clock):
        breaker = tripped(clock, reset_after=30.0)
        clock.now += 29.999
        assert breaker.state == "open"
        clock.now += 0.001
        assert breaker.state == "half_open" and breaker.retry_after() == 0
        breaker.acquire()  # the probe
        assert breaker.state == "half_open"
        for _ in range(3):
            with pytest.raises(CircuitOpen) as info:
                breaker.acquire()
            assert info.value.headers == {"Retry-After": "1"}

    def test_a_successful_probe_closes(self, clock):
        breaker = tripped(clock)
        clock.now += 30
        breaker.acquire()
        breaker.record_success()
        assert breaker.state == "closed" and breaker.opened_at is None and breaker.consecutive_failures == 0
        breaker.acquire()
        breaker.acquire()

    def test_a_failed_probe_reopens_for_a_full_period(self, clock):
        breaker = tripped(clock, reset_after=30.0)
        clock.now += 31
        breaker.acquire()
        breaker.record_failure()
        assert breaker.state == "open" and breaker.opened_at == clock.now and breaker.opens == 2
        with pytest.raises(CircuitOpen) as info:
            breaker.acquire()
        assert info.value.headers == {"Retry-After": "30"}
        clock.now += 30
        breaker.acquire()  # the next probe
        breaker.record_success()
        assert breaker.state == "closed"

    def test_a_released_probe_lets_the_next_call_probe(self, clock):
        breaker = tripped(clock)
        clock.now += 30
        breaker.acquire()
        assert not breaker.allow()
        breaker.release()  # the probe's caller was cancelled
        assert breaker.allow()
        assert not breaker.allow()

    def test_a_lost_probe_does_not_keep_the_breaker_half_open_forever(self, clock):
        breaker = tripped(clock, reset_after=30.0)
        clock.now += 30
        breaker.acquire()  # never reports back
        clock.now += 29
        assert not breaker.allow()
        clock.now += 1
        assert breaker.allow()

    def test_release_outside_half_open_does_nothing(self, clock):
        breaker = CircuitBreaker(failure_threshold=2, clock=clock)
        breaker.acquire()
        breaker.release()
        assert breaker.state == "closed"
        breaker = tripped(clock)
        breaker.release()
        assert breaker.state == "open"


class TestFullCycle:
    def test_closed_open_half_open_open_half_open_closed(self, clock):
        breaker = CircuitBreaker(failure_threshold=2, reset_after=10.0, clock=clock)
        states = [breaker.state]
        for _ in range(2):
            breaker.acquire()
            breaker.record_failure()
        states.append(breaker.state)
        clock.now += 10
        states.append(breaker.state)
        breaker.acquire()
        breaker.record_failure()
        states.append(breaker.state)
        clock.now += 10
        states.append(breaker.state)
        breaker.acquire()
        breaker.record_success()
        states.append(breaker.state)
        assert states == ["closed", "open", "half_open", "open", "half_open", "closed"]
        assert (breaker.opens, breaker.failures, breaker.successes) == (2, 3, 1)


def adaptive(clock: Clock, **options: float) -> CircuitBreaker:
    options = {"reset_after": 30.0, "initial_reset": 1.0} | options
    return CircuitBreaker(failure_threshold=2, clock=clock, **options)  # type: ignore[arg-type]


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        breaker.acquire()
        breaker.record_failure()
    assert breaker.state == "open"


def refusal(breaker: CircuitBreaker) -> str:
    with pytest.raises(CircuitOpen) as info:
        breaker.acquire()
    return info.value.headers["Retry-After"]


class TestAdaptivePeriod:
    def test_the_first_open_is_short(self, clock):
        breaker = adaptive(clock)
        trip(breaker)
        assert breaker.period == 1.0 and refusal(breaker) == "1"
        clock.now += 0.999
        assert breaker.state == "open"
        clock.now += 0.001
        assert breaker.state == "half_open" and breaker.retry_after() == 0
        breaker.acquire()  # the probe, one second after the circuit opened
        breaker.record_success()
        assert breaker.state == "closed"

    def test_each_failed_probe_doubles_the_period_up_to_reset_after(self, clock):
        breaker = adaptive(clock)
        trip(breaker)
        periods, refusals = [breaker.period], [refusal(breaker)]
        for _ in range(7):
            clock.now += breaker.period
            breaker.acquire()  # the probe
            breaker.record_failure()
            periods.append(breaker.period)
            refusals.append(refusal(breaker))
            assert breaker.opened_at == clock.now
        assert periods == [1, 2, 4, 8, 16, 30, 30, 30]
        assert refusals == ["1", "2", "4", "8", "16", "30", "30", "30"]
        assert breaker.opens == 8

    def test_retry_after_is_the_time_left_in_whole_seconds(self, clock):
        breaker = adaptive(clock)
        trip(breaker)
        clock.now += 1
        breaker.acquire()
        breaker.record_failure()  # now open for 2 s
        clock.now += 0.5
        assert breaker.retry_after() == pytest.approx(1.5) and refusal(breaker) == "2"
        clock.now += 1.4
        assert refusal(breaker) == "1"  # 0.1 s left: never 0

    def test_a_successful_probe_resets_the_period(self, clock):
        breaker = adaptive(clock)
        trip(breaker)
        for _ in range(3):
            clock.now += breaker.period
            breaker.acquire()
            breaker.record_failure()
        assert breaker.period == 8
        clock.now += 8
        breaker.acquire()
        breaker.record_success()
        assert breaker.state == "closed" and breaker.period == 1
        trip(breaker)  # the next outage
        assert refusal(breaker) == "1"

    def test_outcomes_of_calls_started_before_opening_do_not_double_it(self, clock):
        breaker = adaptive(clock)
        trip(breaker)
        breaker.record_failure()
        breaker.record_failure()
        assert breaker.period == 1 and breaker.opens == 1

    def test_initial_reset_is_capped_at_reset_after(self, clock):
        breaker = adaptive(clock, reset_after=0.5, initial_reset=1.0)
        trip(breaker)
        assert breaker.period == 0.5
        clock.now += 0.5
        assert breaker.state == "half_open"

    def test_without_initial_reset_the_period_is_fixed(self, clock):
        breaker = CircuitBreaker(failure_threshold=1, reset_after=30.0, clock=clock)
        trip(breaker)
        assert refusal(breaker) == "30"
        clock.now += 30
        breaker.acquire()
        breaker.record_failure()
        assert breaker.period == 30 and refusal(breaker) == "30"


class TestLostProbe:
    """A probe that never reports is presumed lost after max(period, probe_timeout): not while it may still run."""

    def test_a_slow_probe_is_not_taken_for_a_lost_one(self, clock):
        breaker = adaptive(clock, probe_timeout=21.0)
        trip(breaker)
        clock.now += 1
        breaker.acquire()  # the probe, against a PACS that takes up to 21 s to fail
        clock.now += 20.9
        assert not breaker.allow()  # no pile-up of probes every second
        assert refusal(breaker) == "1"
        clock.now += 0.1
        assert breaker.allow()  # presumed lost: the next call probes

    def test_a_lost_probe_waits_at_least_the_current_period(self, clock):
        breaker = adaptive(clock, probe_timeout=5.0)
        trip(breaker)
        for _ in range(4):
            clock.now += breaker.period
            breaker.acquire()
            breaker.record_failure()
        assert breaker.period == 16
        clock.now += 16
        breaker.acquire()  # never reports
        clock.now += 15.9
        assert not breaker.allow()
        clock.now += 0.1
        assert breaker.allow()

    def test_probe_timeout_defaults_to_reset_after(self, clock):
        breaker = adaptive(clock)
        trip(breaker)
        clock.now += 1
        breaker.acquire()
        clock.now += 29.9
        assert not breaker.allow()
        clock.now += 0.1
        assert breaker.allow()
