"""A deployment's health: its circuit breaker and the requests it carries now.

Closed, a deployment takes traffic. ``failures_to_open`` failed attempts in a row open it: it
takes none for the cooldown. Once the cooldown is over it is half-open: the next request may
probe it (one at a time); a success closes it, a failure opens it again for twice as long (up to
``cooldown_max``). A ``Retry-After`` from the deployment opens it for that long. An attempt the
deployment answered, even with a refusal of the request (a 400), is a sign of life, not a failure.

State changes are synchronous (no ``await`` between a check and its update), so one event loop
needs no lock. The clock is ``time.monotonic``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum

from kiban.core.metrics import DEPLOYMENT_BREAKER, DEPLOYMENT_IN_FLIGHT


class BreakerState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class Health:
    """One deployment's breaker and in-flight count."""

    def __init__(
        self,
        name: str,
        *,
        max_concurrency: int | None,
        failures_to_open: int,
        cooldown: float,
        cooldown_max: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.max_concurrency = max_concurrency
        self.failures_to_open = failures_to_open
        self.base_cooldown = cooldown
        self.cooldown_max = max(cooldown, cooldown_max)
        self.clock = clock
        self.open = False
        self.open_until = 0.0
        self.opened_at = 0.0
        self.cooldown = cooldown
        self.failures = 0  # in a row
        self.probing = False  # a half-open probe is in flight
        self.in_flight = 0
        # Read when /metrics is scraped (the latest router's, if several apps share a process).
        DEPLOYMENT_BREAKER.labels(name).set_function(lambda: float(self.state))
        DEPLOYMENT_IN_FLIGHT.labels(name).set_function(lambda: float(self.in_flight))

    @property
    def state(self) -> BreakerState:
        if not self.open:
            return BreakerState.CLOSED
        return BreakerState.OPEN if self.clock() < self.open_until else BreakerState.HALF_OPEN

    def available(self) -> bool:
        """Whether the router may send it a request now (closed, or half-open with no probe)."""
        state = self.state
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self.probing
        )

    def has_room(self) -> bool:
        return self.max_concurrency is None or self.in_flight < self.max_concurrency

    def begin(self) -> bool:
        """An attempt starts; True when it is the half-open probe."""
        self.in_flight += 1
        probe = self.open and not self.probing and self.clock() >= self.open_until
        if probe:
            self.probing = True
        return probe

    def release(self) -> None:
        """An attempt's request is over (a stream: when it ends)."""
        self.in_flight -= 1

    def succeeded(self, probe: bool) -> None:
        if probe:
            self.probing = False
        self.failures = 0
        if self.open:
            self.open = False
            self.cooldown = self.base_cooldown

    def failed(self, probe: bool, wait: float | None, started: float | None = None) -> None:
        """A failed attempt (``wait``: the Retry-After the deployment sent, in seconds;
        ``started``: when the attempt began, by this clock; None: just now)."""
        if probe:
            self.probing = False
        self.failures += 1
        now = self.clock()
        if self.open:
            # A failed probe (or a last-resort attempt): out for longer. An attempt that began
            # before the breaker opened (one of a burst in flight together) changes nothing.
            if probe or (started if started is not None else now) >= self.opened_at:
                self.cooldown = min(self.cooldown * 2, self.cooldown_max)
                self._open(now + self.cooldown)
        elif self.failures >= self.failures_to_open:
            self.cooldown = self.base_cooldown
            self._open(now + self.cooldown)
        if wait:
            self._open(max(self.open_until if self.open else 0.0, now + wait))

    def _open(self, until: float) -> None:
        if not self.open:
            self.opened_at = self.clock()
        self.open = True
        self.open_until = until
