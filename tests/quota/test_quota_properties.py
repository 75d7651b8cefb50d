"""Property test of the reserve/settle arithmetic against the real stores.

Any sequence of reservations, settlements (actual usage at most what was reserved) and crashes
(reservations left to expire) keeps: counters never negative, ``used + reserved`` never above the
limit, a reservation taken exactly when it fits, and every token released when it is settled or
expires.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiban.billing.entitlements import calendar_month
from kiban.quota.store import QuotaStore, Reservation
from tests.quota.conftest import insert_user

LIMIT = 500
TTL = timedelta(seconds=60)

operations = st.lists(
    st.one_of(
        # Round amounts make exact fits (used + reserved == limit) common, not a fluke.
        st.tuples(
            st.just("reserve"),
            st.one_of(st.sampled_from([0, 100, 250, 500]), st.integers(min_value=0, max_value=300)),
        ),
        st.tuples(
            st.just("settle"),
            st.integers(min_value=0, max_value=50),
            st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0, 1)),
        ),
        st.tuples(st.just("crash")),
    ),
    min_size=1,
    max_size=25,
)


@dataclass
class Live:
    reservation: Reservation
    handle: object


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=operations)
async def test_reserve_settle_arithmetic(
    store: QuotaStore, database_url: str, ops: list[tuple[Any, ...]]
) -> None:
    user = await insert_user(database_url)
    now = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
    start, end = calendar_month(now)
    live: list[Live] = []
    abandoned = 0  # tokens held by "crashed" requests: never settled, released by expiry
    used = 0

    def reservation(tokens: int) -> Reservation:
        return Reservation(
            id=uuid.uuid4(),
            user_id=user.id,
            period_start=start,
            period_end=end,
            tokens=tokens,
            cost_nanos=0,
            token_limit=LIMIT,
            cost_limit_nanos=None,
            requests_per_minute=10**6,
            tokens_per_minute=None,
            now=now,
            expires_at=now + TTL,
        )

    def held() -> int:
        return sum(item.reservation.tokens for item in live)

    for op in ops:
        if op[0] == "reserve":
            candidate = reservation(op[1])
            outcome = await store.reserve(candidate)
            # Taken exactly when it fits beside what is really in flight (expired ones are
            # released on the way when they are in the way).
            fits = used + held() + op[1] <= LIMIT
            assert (outcome.refused is None) == fits, (used, held(), op)
            if fits:
                live.append(Live(candidate, outcome.handle))
        elif op[0] == "settle":
            if not live:
                continue
            item = live.pop(op[1] % len(live))
            actual = int(item.reservation.tokens * op[2])
            settled = await store.settle(
                item.reservation, item.handle, used_tokens=actual, used_cost_nanos=0
            )
            assert settled == "settled"
            used += actual
        else:  # a crash: every request in flight dies unsettled, and their expiry passes
            abandoned += held()
            live.clear()
            now = now + TTL + timedelta(seconds=1)
        state = await store.state(user.id, start)
        assert state.used_tokens == used
        assert held() <= state.reserved_tokens <= held() + abandoned
        assert state.used_tokens + state.reserved_tokens <= LIMIT

    for item in live:
        settled = await store.settle(
            item.reservation, item.handle, used_tokens=0, used_cost_nanos=0
        )
        assert settled == "settled"
    # Whatever crashed is released by the sweeper (database) or the next reservation (Redis).
    later = now + TTL + timedelta(seconds=1)
    await store.release_expired(later)
    now = later
    assert (await store.reserve(reservation(0))).refused is None
    state = await store.state(user.id, start)
    assert state.reserved_tokens == 0
    assert state.used_tokens == used
