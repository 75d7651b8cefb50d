"""The state engine and the Stripe object readers, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kiban.billing.snapshot import (
    checkout_completion,
    invoice_subscription_id,
    subscription_snapshot,
)
from kiban.billing.state import derive_state
from kiban.models.billing import SubscriptionState as S

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=10)
EARLIER = NOW - timedelta(seconds=1)
GRACE = timedelta(days=7)


@pytest.mark.parametrize(
    ("status", "cancel", "period_end", "past_due_since", "expected"),
    [
        (None, False, None, None, S.FREE),
        ("incomplete", False, LATER, None, S.FREE),
        ("active", False, LATER, None, S.ACTIVE),
        ("trialing", False, LATER, None, S.TRIALING),
        ("active", True, LATER, None, S.CANCELED),
        ("active", False, EARLIER, None, S.EXPIRED),  # status alone never grants access
        ("active", True, EARLIER, None, S.EXPIRED),
        ("active", False, None, None, S.EXPIRED),
        ("past_due", False, LATER, NOW - timedelta(days=6), S.PAST_DUE),
        ("past_due", False, LATER, NOW - timedelta(days=7), S.EXPIRED),  # grace over
        ("past_due", False, EARLIER, NOW, S.EXPIRED),  # never past the period's end
        ("canceled", False, LATER, None, S.EXPIRED),
        ("unpaid", False, LATER, None, S.EXPIRED),
        ("incomplete_expired", False, LATER, None, S.EXPIRED),
        ("paused", False, LATER, None, S.EXPIRED),
        ("some_future_status", False, LATER, None, S.EXPIRED),
    ],
)
def test_derive_state(
    status: str | None,
    cancel: bool,
    period_end: datetime | None,
    past_due_since: datetime | None,
    expected: S,
) -> None:
    state = derive_state(
        stripe_status=status,
        cancel_at_period_end=cancel,
        current_period_end=period_end,
        past_due_since=past_due_since,
        now=NOW,
        grace=GRACE,
    )
    assert state is expected


def test_snapshot_prefers_item_periods_and_reads_expanded_ids() -> None:
    snap = subscription_snapshot(
        {
            "id": "sub_1",
            "status": "active",
            "customer": {"id": "cus_1", "object": "customer"},
            "current_period_end": 100,
            "cancel_at": 2000,
            "items": {
                "data": [
                    {
                        "current_period_start": 1000,
                        "current_period_end": 2000,
                        "price": {"id": "price_a"},
                    }
                ]
            },
        }
    )
    assert snap is not None
    assert snap.customer_id == "cus_1"
    assert snap.price_id == "price_a"
    assert snap.current_period_end == datetime.fromtimestamp(2000, UTC)
    assert snap.cancel_at_period_end is True  # cancel_at at the period's end: will not renew


def test_snapshot_of_something_else_is_none() -> None:
    assert subscription_snapshot({"object": "customer", "id": "cus_1"}) is None


def test_invoice_subscription_new_and_old_places() -> None:
    new = {"parent": {"subscription_details": {"subscription": "sub_new"}}, "subscription": None}
    assert invoice_subscription_id(new) == "sub_new"
    assert invoice_subscription_id({"subscription": "sub_old"}) == "sub_old"
    assert invoice_subscription_id({"subscription": None}) is None


def test_checkout_completion_reads_the_user_from_reference_or_metadata() -> None:
    done = checkout_completion(
        {"metadata": {"user_id": "u1"}, "customer": "cus", "subscription": "sub"}
    )
    assert (done.user_id_hint, done.customer_id, done.subscription_id) == ("u1", "cus", "sub")
    assert checkout_completion({"client_reference_id": "u2"}).user_id_hint == "u2"
