"""The pure parts of robust downloading: breaker, retry policy, Retry-After, scheduler."""

from __future__ import annotations

import bisect
import dataclasses
import email.utils
import random
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from messages import WorkItem
from runtime.core.breaker import CircuitBreaker
from runtime.core.config import CircuitConfig, RetryConfig
from runtime.core.hosts import host_of
from runtime.core.retry import RetryPolicy, parse_retry_after
from runtime.core.scheduler import Scheduler
from tests.helpers import make_config

# -- the circuit breaker against a reference model ----------------------------------------

WINDOW = 5
MIN_REQUESTS = 3
RATE = 0.5
RESET = 10.0


class BreakerMachine(RuleBasedStateMachine):
    """Requests go out when the breaker allows them and end in any order.

    The reference model keeps the window as a plain list and recomputes the failure rate
    from it after every failure: closed until at least MIN_REQUESTS of the last WINDOW
    outcomes are in and more than RATE of them failed; open for RESET seconds; then exactly one
    probe, whose counted outcome decides; an ignored failure frees the probe slot.
    """

    give_up_after = 0

    @initialize()
    def setup(self) -> None:
        self.breaker = CircuitBreaker(
            CircuitConfig(
                window=WINDOW,
                min_requests=MIN_REQUESTS,
                failure_rate=RATE,
                reset_timeout=RESET,
                give_up_after=self.give_up_after,
            )
        )
        self.m_probe_failures = 0
        self.now = 0.0
        self.in_flight = 0
        self.m_state = "closed"
        self.m_window: list[str] = []
        self.m_opened_at = 0.0
        self.m_opened = 0
        self.m_probe = False

    def _m_open(self) -> None:
        self.m_state, self.m_opened_at, self.m_probe = "open", self.now, False
        self.m_opened += 1
        self.m_window = []

    def _m_tick(self) -> None:
        if self.m_state == "open" and self.now - self.m_opened_at >= RESET:
            self.m_state, self.m_probe = "half_open", False

    def _m_record(self, kind: str) -> None:
        self.m_window = [*self.m_window, kind][-WINDOW:]
        failed = sum(1 for k in self.m_window if k)
        if kind and len(self.m_window) >= MIN_REQUESTS and failed / len(self.m_window) > RATE:
            self._m_open()

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
            self.in_flight += 1

    @precondition(lambda self: self.in_flight)
    @rule(
        outcome=st.sampled_from(["ok", "fail", "ignored", "released"]),
        kind=st.sampled_from(["connection", "timeout", "http_5xx"]),
    )
    def finish(self, outcome: str, kind: str) -> None:
        self.in_flight -= 1
        self._m_tick()
        if outcome == "ok":
            self.breaker.succeeded()
            if self.m_state != "closed":
                self.m_window = []
            self.m_state, self.m_probe, self.m_probe_failures = "closed", False, 0
            self._m_record("")
        elif outcome == "fail":
            self.breaker.failed(self.now, kind)
            if self.m_state == "half_open":
                self.m_probe_failures += 1
                self._m_open()
                if self.give_up_after and self.m_probe_failures >= self.give_up_after:
                    self.m_state = "down"
            elif self.m_state == "closed":
                self._m_record(kind)
        elif outcome == "ignored":
            self.breaker.ignored()
            self.m_probe = False
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
        assert list(self.breaker.outcomes) == self.m_window
        assert self.breaker.failures == sum(1 for k in self.m_window if k)
        if self.m_state == "open":
            assert self.now - self.m_opened_at < RESET


class GivingUpBreakerMachine(BreakerMachine):
    """The same, with ``give_up_after = 2``."""

    give_up_after = 2


TestBreaker = BreakerMachine.TestCase
TestBreaker.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
TestGivingUpBreaker = GivingUpBreakerMachine.TestCase
TestGivingUpBreaker.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)


def breaker(**overrides: float) -> CircuitBreaker:
    values: dict[str, float] = {"window": 10, "min_requests": 4, "failure_rate": 0.5,
                                "reset_timeout": 5.0, **overrides}  # fmt: skip
    return CircuitBreaker(
        CircuitConfig(
            window=int(values["window"]),
            min_requests=int(values["min_requests"]),
            failure_rate=values["failure_rate"],
            reset_timeout=values["reset_timeout"],
            give_up_after=int(values.get("give_up_after", 0)),
        )
    )


def test_breaker_opens_on_the_failure_rate_of_its_window_and_says_why() -> None:
    """Not before min_requests; then when more than failure_rate of the window failed."""
    b = breaker()
    for _ in range(3):
        b.failed(0.0, "connection")
    assert b.state == "closed"  # 3 < min_requests, however bad
    b.succeeded()
    b.succeeded()
    assert (b.state, b.rate) == ("closed", 0.6)  # only a failure is judged
    assert b.describe() == "60 % of last 5 failed (connection 3)"
    b.succeeded()
    b.failed(1.0, "timeout")  # 4 of 7 > 0.5
    assert b.state == "open"
    assert b.reason == "57 % of last 7 failed (connection 3, timeout 1)"


def test_breaker_opens_waits_probes_and_closes() -> None:
    b = breaker(min_requests=2)
    b.failed(0.0, "timeout")
    assert b.allows(0.0)
    b.failed(1.0, "timeout")
    assert (b.state, b.allows(1.0), b.allows(5.9)) == ("open", False, False)
    assert b.reason == "100 % of last 2 failed (timeout 2)"
    assert b.allows(6.0)
    assert b.state == "half_open"
    b.dispatched()
    assert not b.allows(6.0)  # one probe at a time
    b.failed(7.0, "timeout")
    assert (b.state, b.times_opened, b.allows(11.9)) == ("open", 2, False)
    assert b.allows(12.0)
    b.dispatched()
    b.succeeded()
    assert (b.state, b.failures, b.allows(12.0)) == ("closed", 0, True)


def test_breaker_gives_up_after_failed_probes() -> None:
    b = breaker(min_requests=1, give_up_after=2)
    b.failed(0.0, "connection")
    for t in (5.0, 10.0):
        assert b.allows(t)
        b.dispatched()
        b.failed(t, "connection")
    assert (b.state, b.given_up, b.allows(100.0)) == ("down", True, False)
    b.succeeded()  # a late answer from an earlier request: the host is up after all
    assert (b.state, b.allows(100.0)) == ("closed", True)


def test_a_few_failures_among_many_successes_never_open_it() -> None:
    """2 % failures, however they cluster, stay far below the rate."""
    b = breaker(window=50, min_requests=20)
    for i in range(500):
        if i % 50 < 1:
            b.failed(float(i), "http_5xx")
        else:
            b.succeeded()
    assert (b.state, b.times_opened) == ("closed", 0)


def test_an_ignored_failure_frees_the_probe_without_reopening() -> None:
    """A half-open probe that fails on a known-bad URL says nothing about the host."""
    b = breaker(min_requests=1)
    b.failed(0.0, "http_5xx")
    assert b.allows(5.0)
    b.dispatched()
    b.ignored()
    assert (b.state, b.times_opened, b.allows(5.0)) == ("half_open", 1, True)


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


class Queue:
    """Pending items per host, as the store keeps them."""

    def __init__(self, queue: list[WorkItem]) -> None:
        self.rows: dict[str, list[tuple[int, WorkItem]]] = {}
        for seq, item in enumerate(queue, 1):
            self.rows.setdefault(host_of(item.url), []).append((seq, item))

    def pending_hosts(self) -> list[str]:
        return sorted(self.rows)

    def pending_of(
        self, host: str, large: bool, after: int, limit: int, threshold: int = 1000
    ) -> list[tuple[int, WorkItem]]:
        rows = self.rows.get(host, [])
        start = bisect.bisect_right([seq for seq, _ in rows], after)
        found = []
        for seq, item in rows[start:]:
            if large == (item.size is not None and item.size > threshold):
                found.append((seq, item))
                if len(found) == limit:
                    break
        return found


def scheduler(tmp_path: Path, queue: list[WorkItem], **download: object) -> Scheduler:
    config = make_config(
        tmp_path,
        download={"per_host": 2, "large_threshold": 1000, **download},
        circuit={"window": 1, "min_requests": 1, "failure_rate": 0.0, "reset_timeout": 10.0},
    )
    return Scheduler(config, Queue(queue))


def drain(s: Scheduler, lane: str, now: float) -> list[str]:
    out = []
    while (item := s.next_for(lane, now)) is not None:
        s.dispatched(item)
        out.append(item.id)
    return out


def test_per_host_limit_holds_its_host_only_and_hosts_take_turns(tmp_path: Path) -> None:
    s = scheduler(tmp_path, items("a", 5) + items("b", 2))
    assert drain(s, "small", 0.0) == ["a-0", "b-0", "a-1", "b-1"]
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


def windowed(tmp_path: Path, queue: list[WorkItem]) -> Scheduler:
    config = make_config(
        tmp_path,
        download={"per_host": 0},
        circuit={"window": 4, "min_requests": 4, "failure_rate": 0.5, "reset_timeout": 10.0},
    )
    return Scheduler(config, Queue(queue))


def test_url_level_failures_count_once_per_item_host_level_every_time(tmp_path: Path) -> None:
    """A broken URL's retries do not count against its host; refused connections do."""
    s = windowed(tmp_path, [])
    url = WorkItem(id="u", url="http://h/u", name="u")
    breaker = s._state(host_of(url.url)).breaker
    for attempt in (1, 2, 3, 4, 5):
        s.dispatched(url)
        s.failed(dataclasses.replace(url, attempts=attempt), "http_5xx", None, 0.0, True,
                 scope="url")  # fmt: skip
    assert (breaker.failures, breaker.state) == (1, "closed")  # only the first counted
    for attempt in (2, 3, 4):
        s.dispatched(url)
        s.failed(dataclasses.replace(url, attempts=attempt), "connection", None, 0.0, True,
                 scope="host")  # fmt: skip
    assert breaker.state == "open"
    assert breaker.reason == "100 % of last 4 failed (connection 3, http_5xx 1)"


def test_a_half_open_host_probes_with_an_item_that_has_not_failed(tmp_path: Path) -> None:
    """The retry of a known-bad URL waits; a fresh item of the host goes first."""
    fresh = WorkItem(id="fresh", url="http://h/fresh", name="fresh")
    s = windowed(tmp_path, [fresh])
    bad = WorkItem(id="bad", url="http://h/bad", name="bad", attempts=1)
    breaker = s._state(host_of(bad.url)).breaker
    for _ in range(4):
        breaker.failed(0.0, "connection")
    assert breaker.state == "open"
    s.requeue(bad)
    assert s.next_for("small", 5.0) is None  # open: both wait
    probe = s.next_for("small", 10.0)
    assert probe is not None
    assert probe.id == "fresh"
    s.dispatched(probe)
    assert s.next_for("small", 10.0) is None  # one probe at a time
    s.failed(probe, "http_5xx", None, 10.0, True, scope="url")
    assert s.next_for("small", 20.0) == bad  # no fresh one left: the known-bad one probes


def test_a_cooling_host_with_many_items_holds_nothing_and_delays_no_other(
    tmp_path: Path,
) -> None:
    """Work waits per host in the store: a host paused by a 429 keeps its 100,000 items
    there (a few in memory at most) and every other host's items flow meanwhile."""
    s = scheduler(tmp_path, items("a", 100_000) + items("b", 3) + items("c", 3), per_host=0)
    first = s.next_for("small", 0.0)
    assert first is not None
    assert first.id == "a-0"
    s.dispatched(first)
    s.failed(first, "rate_limited", 60.0, 0.0, retried=True)
    s.requeue(first, 60.0)
    assert sorted(drain(s, "small", 1.0)) == ["b-0", "b-1", "b-2", "c-0", "c-1", "c-2"]
    assert sum(len(q) for q in s.queued.values()) <= s.block
    assert drain(s, "small", 59.0) == []
    retry = s.next_for("small", 60.0)
    assert retry is not None
    assert retry.id == "a-0"  # its turn again
    assert [s.next_for("small", 60.0) for _ in range(2)] == items("a", 3)[1:]


def _host_by_urlsplit(url: str) -> str | type[Exception]:
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return ValueError
    return f"{(parts.hostname or '').lower()}:{port}"


@settings(max_examples=3000)
@given(
    st.sampled_from(["http://", "https://", "HTTP://", "http:/", "ftp://", ""]),
    st.text(alphabet=st.sampled_from(list("aB0.-:@[]9/?#\\% x\r\té")), max_size=20),
    st.text(max_size=5),
)
def test_host_of_agrees_with_urlsplit(scheme: str, netloc: str, rest: str) -> None:
    """The fast path of host_of gives what urlsplit would, for any url."""
    url = scheme + netloc + rest
    try:
        got: str | type[Exception] = host_of(url)
    except ValueError:
        got = ValueError
    assert got == _host_by_urlsplit(url)
