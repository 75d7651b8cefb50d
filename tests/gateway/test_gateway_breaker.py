"""The breaker, the choice among deployments and what a failed attempt means: pure functions
and a state machine, driven by an explicit clock."""

from __future__ import annotations

from collections import Counter

import pytest

from kiban.gateway.breaker import BreakerState, Health
from kiban.gateway.deployments import Deployment
from kiban.gateway.exceptions import (
    InvalidRequest,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from kiban.gateway.routing import Disposition, Member, _weighted, classify


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def health(clock: Clock, **fields: object) -> Health:
    options: dict[str, object] = {
        "max_concurrency": None,
        "failures_to_open": 3,
        "cooldown": 5.0,
        "cooldown_max": 20.0,
        **fields,
    }
    return Health("unit", clock=clock, **options)  # type: ignore[arg-type]


def fail(h: Health, wait: float | None = None) -> None:
    probe = h.begin()
    h.release()
    h.failed(probe, wait)


def test_failures_in_a_row_open_the_breaker_for_the_cooldown() -> None:
    clock = Clock()
    h = health(clock)
    fail(h)
    fail(h)
    assert h.state is BreakerState.CLOSED
    fail(h)
    assert (h.state, h.available()) == (BreakerState.OPEN, False)
    clock.now += 4.9
    assert not h.available()
    clock.now += 0.2
    assert (h.state, h.available()) == (BreakerState.HALF_OPEN, True)


def test_a_success_between_failures_starts_the_count_again() -> None:
    h = health(Clock())
    fail(h)
    fail(h)
    h.succeeded(h.begin())
    h.release()
    fail(h)
    fail(h)
    assert h.state is BreakerState.CLOSED


def test_half_open_lets_one_probe_through_and_its_success_closes() -> None:
    clock = Clock()
    h = health(clock)
    for _ in range(3):
        fail(h)
    clock.now += 5
    assert h.begin() is True  # the probe
    assert not h.available()  # no second probe while it runs
    h.succeeded(True)
    h.release()
    assert (h.state, h.cooldown) == (BreakerState.CLOSED, 5.0)


def test_a_failed_probe_doubles_the_cooldown_up_to_the_max() -> None:
    clock = Clock()
    h = health(clock)
    for _ in range(3):
        fail(h)
    cooldowns = []
    for _ in range(4):
        clock.now = h.open_until
        fail(h)
        cooldowns.append(h.cooldown)
    assert cooldowns == [10.0, 20.0, 20.0, 20.0]
    assert h.open_until == clock.now + 20.0


def test_failures_in_flight_when_it_opened_do_not_lengthen_the_cooldown() -> None:
    clock = Clock()
    h = health(clock)
    began = clock()
    burst = [h.begin() for _ in range(10)]  # ten requests sent together, all to fail
    clock.now += 1
    for probe in burst:
        h.release()
        h.failed(probe, None, began)
    assert (h.state, h.cooldown, h.open_until) == (BreakerState.OPEN, 5.0, clock.now + 5.0)


def test_retry_after_opens_at_once_for_as_long_as_asked() -> None:
    clock = Clock()
    h = health(clock)
    fail(h, wait=30)
    assert h.state is BreakerState.OPEN
    clock.now += 29
    assert not h.available()
    clock.now += 1
    assert h.available()


def test_the_cap_counts_requests_in_flight() -> None:
    h = health(Clock(), max_concurrency=2)
    h.begin()
    h.begin()
    assert not h.has_room()
    h.release()
    assert h.has_room()


def member(name: str, weight: float) -> Member:
    deployment = Deployment(name, "openai", "http://x", None, None, 1.0, 1.0, None, weight)
    return Member(deployment, provider=None, health=health(Clock()))  # type: ignore[arg-type]


def test_smooth_weighted_round_robin_gives_exact_interleaved_shares() -> None:
    members = [member("a", 5), member("b", 1), member("c", 1)]
    picks = [_weighted(members).name for _ in range(70)]
    assert Counter(picks) == {"a": 50, "b": 10, "c": 10}
    assert picks[:7].count("a") == 5  # interleaved, not a burst of one
    assert "aaaaaa" not in "".join(picks)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (UpstreamUnavailable(), (Disposition.RETRY, True)),  # refused, reset
        (UpstreamUnavailable(upstream_status=429), (Disposition.RETRY, True)),
        (UpstreamTimeout(), (Disposition.RETRY, True)),
        (UpstreamError(upstream_status=500), (Disposition.RETRY, True)),
        (UpstreamError(upstream_status=502), (Disposition.RETRY, True)),
        (UpstreamError(upstream_status=429), (Disposition.NEXT, True)),  # insufficient_quota
        (UpstreamError(upstream_status=401), (Disposition.NEXT, True)),
        (UpstreamError(upstream_status=404), (Disposition.NEXT, False)),
        (UpstreamError(), (Disposition.FINAL, True)),  # an answer kiban cannot read
        (InvalidRequest("bad"), (Disposition.FINAL, False)),  # the upstream's 400
    ],
)
def test_what_a_failed_attempt_means(
    error: UpstreamError | InvalidRequest, expected: tuple[Disposition, bool]
) -> None:
    assert classify(error) == expected
