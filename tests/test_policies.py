"""The pure parts of robust downloading: breaker, retry policy, Retry-After, scheduler."""

from __future__ import annotations

import email.utils
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from messages import WorkItem
from runtime.breaker import CircuitBreaker
from runtime.config import RetryConfig
from runtime.retry import RetryPolicy, parse_retry_after
from runtime.scheduler import Scheduler, host_of
from tests.helpers import make_config

# -- the circuit breaker against a reference model ----------------------------------------

THRESHOLD = 3
RESET = 10.0


class BreakerMachine(RuleBasedStateMachine):
    """Requests go out when the breaker allows them and end in any order.

    The reference model is the transition table of the README, kept as plain fields:
    consecutive failures counted while closed; open for RESET seconds; then exactly one
    probe; whatever outcome arrives while half-open decides.
    """

    give_up_after = 0

    @initialize()
    def setup(self) -> None:
        self.breaker = CircuitBreaker(THRESHOLD, RESET, self.give_up_after)
        self.m_probe_failures = 0
        self.now = 0.0
        self.in_flight: list[str] = []  # the breaker state each was sent in
        self.m_state = "closed"
        self.m_failures = 0
        self.m_opened_at = 0.0
        self.m_opened = 0
        self.m_probe = False

    def _m_open(self) -> None:
        self.m_state, self.m_opened_at, self.m_probe = "open", self.now, False
        self.m_opened += 1

    def _m_tick(self) -> None:
        if self.m_state == "open" and self.now - self.m_opened_at >= RESET:
            self.m_state, self.m_probe = "half_open", False

    @rule(dt=st.sampled_from([0.0, 0.5, 3.0, RESET, 25.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def request(self) -> None:
        self._m_tick()
        expected = self.m_state == "closed" or (self.m_state == "half_open" and not self.m_probe)
        assert self.breaker.allows(self.now) == expected
        if expected:
            self.breaker.dispatched()
            if self.m_state == "half_open":
                self.m_probe = True
            self.in_flight.append(self.m_state)

    @precondition(lambda self: self.in_flight)
    @rule(index=st.integers(0, 100), outcome=st.sampled_from(["ok", "fail", "released"]))
    def finish(self, index: int, outcome: str) -> None:
        self.in_flight.pop(index % len(self.in_flight))
        self._m_tick()
        if outcome == "ok":
            self.breaker.succeeded()
            self.m_state, self.m_failures, self.m_probe = "closed", 0, False
            self.m_probe_failures = 0
        elif outcome == "fail":
            self.breaker.failed(self.now)
            if self.m_state == "half_open":
                self.m_probe_failures += 1
                self._m_open()
                if self.give_up_after and self.m_probe_failures >= self.give_up_after:
                    self.m_state = "down"
            else:
                self.m_failures += 1
                if self.m_state == "closed" and self.m_failures >= THRESHOLD:
                    self._m_open()
        else:
            self.breaker.released()
            self.m_probe = False

    @invariant()
    def matches_the_model(self) -> None:
        if not hasattr(self, "breaker"):
            return
        self._m_tick()
        self.breaker.allows(self.now)  # lets the breaker make the same timed transition
        assert self.breaker.state == self.m_state
        assert self.breaker.times_opened == self.m_opened
        assert self.breaker.probe_failures == self.m_probe_failures
        if self.m_state == "open":
            assert self.now - self.m_opened_at < RESET


class GivingUpBreakerMachine(BreakerMachine):
    """The same, with ``give_up_after = 2``."""

    give_up_after = 2


TestBreaker = BreakerMachine.TestCase
TestBreaker.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestGivingUpBreaker = GivingUpBreakerMachine.TestCase
TestGivingUpBreaker.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


def test_breaker_opens_waits_probes_and_closes() -> None:
    b = CircuitBreaker(failure_threshold=2, reset_timeout=5.0)
    b.failed(0.0)
    assert b.allows(0.0)
    b.failed(1.0)
    assert (b.state, b.allows(1.0), b.allows(5.9)) == ("open", False, False)
    assert b.allows(6.0)
    assert b.state == "half_open"
    b.dispatched()
    assert not b.allows(6.0)  # one probe at a time
    b.failed(7.0)
    assert (b.state, b.times_opened, b.allows(11.9)) == ("open", 2, False)
    assert b.allows(12.0)
    b.dispatched()
    b.succeeded()
    assert (b.state, b.failures, b.allows(12.0)) == ("closed", 0, True)


def test_breaker_gives_up_after_failed_probes() -> None:
    b = CircuitBreaker(failure_threshold=1, reset_timeout=5.0, give_up_after=2)
    b.failed(0.0)
    for t in (5.0, 10.0):
        assert b.allows(t)
        b.dispatched()
        b.failed(t)
    assert (b.state, b.given_up, b.allows(100.0)) == ("down", True, False)
    b.succeeded()  # a late answer from an earlier request: the host is up after all
    assert (b.state, b.allows(100.0)) == ("closed", True)


def test_success_resets_the_consecutive_count() -> None:
    b = CircuitBreaker(failure_threshold=3, reset_timeout=5.0)
    for _ in range(5):
        b.failed(0.0)
        b.failed(0.0)
        b.succeeded()
    assert b.state == "closed"


# -- the retry policy --------------------------------------------------------------------


def policy(
    seed: int = 1,
    *,
    max_attempts: int = 5,
    backoff_initial: float = 1.0,
    max_retry_after: float = 300.0,
) -> RetryPolicy:
    config = RetryConfig(
        max_attempts=max_attempts,
        backoff_initial=backoff_initial,
        backoff_max=8.0,
        max_retry_after=max_retry_after,
    )
    return RetryPolicy(config, random.Random(seed))


@given(attempt=st.integers(1, 30), seed=st.integers(0, 2**32))
def test_backoff_is_exponential_capped_and_jittered(attempt: int, seed: int) -> None:
    base = min(1.0 * 2 ** (attempt - 1), 8.0)
    delay = policy(seed, max_attempts=100).decide(attempt, False, None).delay
    assert base / 2 <= delay <= base


def test_backoff_is_reproducible_with_a_seed() -> None:
    a = [policy(7).decide(n, False, None).delay for n in range(1, 5)]
    b = [policy(7).decide(n, False, None).delay for n in range(1, 5)]
    c = [policy(8).decide(n, False, None).delay for n in range(1, 5)]
    assert a == b
    assert a != c


def test_stops_after_max_attempts_and_on_permanent_errors() -> None:
    p = policy(max_attempts=3)
    assert [p.decide(n, False, None).retry for n in (1, 2, 3)] == [True, True, False]
    assert not p.decide(1, True, None).retry


def test_retry_after_within_the_cap_sets_the_delay() -> None:
    d = policy(backoff_initial=0.0, max_retry_after=60.0).decide(1, False, 30.0)
    assert (d.retry, d.delay) == (True, 30.0)


def test_retry_after_beyond_the_cap_is_rate_limited() -> None:
    d = policy(max_retry_after=60.0).decide(1, False, 61.0)
    assert (d.retry, d.error_kind) == (False, "rate_limited")
    assert d.error is not None
    assert "61" in d.error


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120", 0.0) == 120.0
    assert parse_retry_after(" 7 ", 0.0) == 7.0
    date = email.utils.formatdate(now + 90, usegmt=True)
    assert parse_retry_after(date, now_wall=now) == pytest.approx(90.0)
    past = email.utils.formatdate(now - 90, usegmt=True)
    assert parse_retry_after(past, now_wall=now) == 0.0
    for bad in (None, "", "soon", "-5", "1.5e3"):
        assert parse_retry_after(bad, 0.0) is None


# -- the scheduler -----------------------------------------------------------------------


def items(host: str, n: int, size: int | None = None) -> list[WorkItem]:
    return [
        WorkItem(id=f"{host}-{i}", url=f"http://{host}/{i}", name=f"{host}-{i}", size=size)
        for i in range(n)
    ]


def scheduler(tmp_path: Path, queue: list[WorkItem], **download: object) -> Scheduler:
    config = make_config(
        tmp_path,
        download={"per_host": 2, "large_threshold": 1000, **download},
        circuit={"failure_threshold": 1, "reset_timeout": 10.0},
    )

    def fetch(n: int) -> list[WorkItem]:
        taken = queue[:n]
        del queue[:n]
        return taken

    return Scheduler(config, fetch)


def drain(s: Scheduler, lane: str, now: float) -> list[str]:
    out = []
    while (item := s.next_for(lane, now)) is not None:
        s.dispatched(item)
        out.append(item.id)
    return out


def test_per_host_limit_parks_instead_of_blocking_other_hosts(tmp_path: Path) -> None:
    s = scheduler(tmp_path, items("a", 5) + items("b", 2))
    assert drain(s, "small", 0.0) == ["a-0", "a-1", "b-0", "b-1"]
    s.succeeded(WorkItem(id="a-0", url="http://a/0", name="a-0"), 10, reused=False)
    assert drain(s, "small", 0.0) == ["a-2"]
    assert s.hosts[host_of("http://a/0")].active == 2


def test_open_breaker_holds_its_host_only(tmp_path: Path) -> None:
    s = scheduler(tmp_path, items("dead", 3) + items("ok", 3), per_host=0)
    first = s.next_for("small", 0.0)
    assert first is not None
    assert first.id == "dead-0"
    s.dispatched(first)
    s.failed(first, "connection", None, 0.0, retried=True)
    s.requeue(first)
    assert drain(s, "small", 1.0) == ["ok-0", "ok-1", "ok-2"]  # dead host parked, no HOL
    assert drain(s, "small", 10.0) == ["dead-0"]  # one half-open probe
    assert drain(s, "small", 10.0) == []


def test_retries_wait_for_their_time_and_rate_limits_cool_the_host(tmp_path: Path) -> None:
    s = scheduler(tmp_path, items("a", 2), per_host=0)
    first = s.next_for("small", 0.0)
    assert first is not None
    s.dispatched(first)
    s.failed(first, "rate_limited", 5.0, 0.0, retried=True)
    s.requeue(first, 5.0)
    assert drain(s, "small", 4.9) == []  # neither the retry nor the other item of the host
    assert sorted(drain(s, "small", 5.0)) == ["a-0", "a-1"]


def test_lanes_split_by_known_size(tmp_path: Path) -> None:
    s = scheduler(tmp_path, items("a", 2, size=5000) + items("b", 2, size=10), per_host=0)
    assert drain(s, "small", 0.0) == ["b-0", "b-1"]
    assert drain(s, "large", 0.0) == ["a-0", "a-1"]


def test_lane_change_moves_an_item_to_the_large_lane(tmp_path: Path) -> None:
    s = scheduler(tmp_path, items("a", 1), per_host=0)
    item = s.next_for("small", 0.0)
    assert item is not None
    s.dispatched(item)
    s.released(item, large_size=10_000)
    s.requeue(item)
    assert drain(s, "small", 0.0) == []
    assert drain(s, "large", 0.0) == ["a-0"]
    assert s.hosts[host_of(item.url)].attempts == 1
