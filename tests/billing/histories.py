"""Realistic Stripe event histories, generated from a model of what Stripe does for one customer.

A history is what Stripe would send, in the order it created the events, for one user over
months: Checkout (paid at once, a trial, or a failed first payment that recovers or expires),
renewals, failed renewals with retries that recover or end the subscription, cancel and resume,
plan switches (pro and team, monthly and yearly), immediate cancellation, re-subscribing, events
kiban ignores, and either API shape (the period on the subscription or on its items; the invoice's
subscription at the top or under ``parent``). ``Expected`` is the model's own final state of each
subscription, against which the API's answer is checked.

Generation is deterministic for a seed; ``build`` makes the same history for any user and tag, so
one history can be delivered to two users (in order to one, shuffled to the other).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from kiban.billing.stripe_client import STRIPE_API_VERSION

PRO_MONTHLY = "price_kiban_pro_monthly"
PRO_YEARLY = "price_kiban_pro_yearly"
TEAM_MONTHLY = "price_kiban_team_monthly"
TEAM_YEARLY = "price_kiban_team_yearly"
PLAN_OF = {PRO_MONTHLY: "pro", PRO_YEARLY: "pro", TEAM_MONTHLY: "team", TEAM_YEARLY: "team"}
YEARLY = {PRO_YEARLY, TEAM_YEARLY}
NOISE = ("invoice.created", "invoice.finalized", "charge.succeeded", "payment_intent.succeeded")

DAY = 86_400


@dataclass(frozen=True)
class Sub:
    """Stripe's side of one subscription at a moment."""

    id: str
    customer: str
    price: str
    status: str
    start: int
    end: int
    cancel: bool = False
    ended_at: int | None = None
    past_due_since: int | None = None  # the model's own record of the first failed payment

    def length(self) -> int:
        return (365 if self.price in YEARLY else 30) * DAY


@dataclass
class History:
    user_id: str
    customer: str
    events: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Sub] = field(default_factory=dict)  # the model's last state per subscription
    newest: dict[str, int] = field(default_factory=dict)  # last event time per subscription


class _Builder:
    def __init__(self, rng: random.Random, user_id: str, tag: str, now: int, new_shape: bool):
        self.rng, self.user_id, self.tag, self.now = rng, user_id, tag, now
        self.new_shape = new_shape
        self.history = History(user_id, f"cus_{tag}")
        self._n = 0

    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self.tag}_{self._n}"

    # --- objects, in either API shape ---------------------------------------------------------

    def _subscription(self, sub: Sub) -> dict[str, Any]:
        price = {
            "id": sub.price,
            "object": "price",
            "recurring": {"interval": "year" if sub.price in YEARLY else "month"},
        }
        obj: dict[str, Any] = {
            "id": sub.id,
            "object": "subscription",
            "customer": sub.customer,
            "status": sub.status,
            "cancel_at_period_end": sub.cancel,
            "cancel_at": sub.end if sub.cancel else None,
            "ended_at": sub.ended_at,
            "canceled_at": sub.ended_at,
            "metadata": {"user_id": self.user_id},
            "livemode": False,
        }
        item: dict[str, Any] = {"id": f"si_{sub.id}", "object": "subscription_item", "price": price}
        if self.new_shape:
            item["current_period_start"], item["current_period_end"] = sub.start, sub.end
        else:
            obj["current_period_start"], obj["current_period_end"] = sub.start, sub.end
            obj["plan"] = {"id": sub.price, "object": "plan"}
        obj["items"] = {"object": "list", "data": [item]}
        return obj

    def _invoice(self, sub: Sub, paid: bool, reason: str, attempt: int = 1) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": self._id("in"),
            "object": "invoice",
            "customer": sub.customer,
            "status": "paid" if paid else "open",
            "attempt_count": attempt,
            "billing_reason": reason,
        }
        if self.new_shape:
            obj["parent"] = {
                "type": "subscription_details",
                "subscription_details": {"subscription": sub.id},
            }
        else:
            obj["subscription"] = sub.id
        return obj

    def _emit(self, event_type: str, obj: dict[str, Any], created: int, sub_id: str | None) -> None:
        self.history.events.append(
            {
                "id": self._id("evt"),
                "object": "event",
                "api_version": STRIPE_API_VERSION,
                "created": created,
                "data": {"object": obj},
                "livemode": False,
                "type": event_type,
            }
        )
        if sub_id is not None:
            self.history.newest[sub_id] = max(self.history.newest.get(sub_id, 0), created)

    def sub_event(self, event_type: str, sub: Sub, t: int) -> Sub:
        self._emit(event_type, self._subscription(sub), t, sub.id)
        self.history.final[sub.id] = sub
        return sub

    def invoice(self, sub: Sub, t: int, *, paid: bool, reason: str, attempt: int = 1) -> None:
        obj = self._invoice(sub, paid, reason, attempt)
        if paid:
            for event_type in ("invoice.paid", "invoice.payment_succeeded")[
                : self.rng.choice([1, 2])
            ]:
                self._emit(event_type, obj, t, sub.id)
        else:
            self._emit("invoice.payment_failed", obj, t, sub.id)

    def noise(self, t: int) -> None:
        if self.rng.random() < 0.5:
            obj = {"id": self._id("ch"), "object": "charge", "customer": self.history.customer}
            self._emit(self.rng.choice(NOISE), obj, t, None)

    def checkout_completed(self, sub: Sub, t: int) -> None:
        obj = {
            "id": self._id("cs"),
            "object": "checkout.session",
            "mode": "subscription",
            "status": "complete",
            "customer": sub.customer,
            "subscription": sub.id,
            "client_reference_id": self.user_id,
            "metadata": {"user_id": self.user_id, "plan": PLAN_OF[sub.price]},
        }
        self._emit("checkout.session.completed", obj, t, sub.id)

    # --- the lifecycle -------------------------------------------------------------------------

    def checkout(self, t: int) -> Sub | None:
        """A subscription through Checkout; None if its first payment never succeeds."""
        rng = self.rng
        price = rng.choice([PRO_MONTHLY, PRO_MONTHLY, PRO_YEARLY, TEAM_MONTHLY, TEAM_YEARLY])
        sub_id = self._id("sub")
        kind = rng.choice(["paid", "paid", "trial", "first_failure"])
        if kind == "trial":
            sub = Sub(sub_id, self.history.customer, price, "trialing", t, t + 14 * DAY)
            self.sub_event("customer.subscription.created", sub, t)
            self.invoice(sub, t, paid=True, reason="subscription_create")
            self.checkout_completed(sub, t + rng.choice([0, 1]))
            return sub
        sub = Sub(sub_id, self.history.customer, price, "incomplete", t, t + 30 * DAY)
        sub = replace(sub, end=t + sub.length())
        self.sub_event("customer.subscription.created", sub, t)
        self.noise(t)
        paid_at = t + rng.choice([0, 1, 2])
        if kind == "first_failure":
            self.invoice(sub, t, paid=False, reason="subscription_create")
            if rng.random() < 0.5:
                expired = replace(sub, status="incomplete_expired", ended_at=t + 23 * 3600)
                if expired.ended_at is not None and expired.ended_at <= self.now:
                    self.sub_event("customer.subscription.updated", expired, expired.ended_at)
                return None
            paid_at = t + rng.randint(60, 3600)
            if paid_at > self.now:
                return None
        active = replace(sub, status="active")
        self.invoice(active, paid_at, paid=True, reason="subscription_create")
        updated_at = max(t, paid_at - rng.choice([0, 1]))
        self.sub_event("customer.subscription.updated", active, updated_at)
        self.checkout_completed(active, paid_at + rng.choice([0, 1]))
        return active

    def live(self, sub: Sub) -> int | None:
        """Run a subscription until it ends or ``now``; the time it ended, if it did."""
        rng = self.rng
        while True:
            # Something may happen within the period, before its end.
            if rng.random() < 0.45:
                t = sub.start + rng.randint(DAY, max(DAY, (sub.end - sub.start) - DAY))
                # Never before what already happened to it (a renewal's late retry): Stripe's
                # ``created`` follows the order things happen in.
                t = max(t, self.history.newest[sub.id] + 60)
                if t > self.now:
                    return None
                if t < sub.end:
                    sub, ended = self._midterm(sub, t)
                    if ended:
                        return t
                    self.noise(t + 1)
            warning = max(sub.end - 3 * DAY, self.history.newest[sub.id] + 60)
            if sub.status == "trialing" and warning < min(sub.end, self.now):
                self.sub_event("customer.subscription.trial_will_end", sub, warning)
            if sub.end > self.now:
                return None
            if sub.cancel:
                gone = replace(sub, status="canceled", ended_at=sub.end)
                self.sub_event("customer.subscription.deleted", gone, sub.end)
                return sub.end
            renewed = self._renew(sub)
            if renewed is None:
                final = self.history.final[sub.id]
                return final.ended_at if final.status == "canceled" else None
            sub = renewed

    def _midterm(self, sub: Sub, t: int) -> tuple[Sub, bool]:
        rng = self.rng
        action = rng.choice(["cancel", "cancel", "switch", "switch", "delete"])
        if action == "delete":
            gone = replace(sub, status="canceled", ended_at=t)
            self.sub_event("customer.subscription.deleted", gone, t)
            return gone, True
        if action == "cancel":
            sub = self.sub_event("customer.subscription.updated", replace(sub, cancel=True), t)
            resume_at = t + rng.randint(3600, 5 * DAY)
            if rng.random() < 0.5 and resume_at < min(sub.end, self.now):
                sub = self.sub_event(
                    "customer.subscription.updated", replace(sub, cancel=False), resume_at
                )
            return sub, False
        choices = [p for p in PLAN_OF if p != sub.price]
        price = rng.choice(choices)
        switched = replace(sub, price=price)
        if (price in YEARLY) != (sub.price in YEARLY):  # a new interval starts a new period
            switched = replace(switched, start=t, end=t + switched.length())
        self.sub_event("customer.subscription.updated", switched, t)
        if t + 1 <= self.now:  # the proration invoice, paid a second later
            self.invoice(switched, t + 1, paid=True, reason="subscription_update")
        return switched, False

    def _renew(self, sub: Sub) -> Sub | None:
        """The renewal at the period's end; the renewed subscription, or None if it stopped."""
        rng = self.rng
        t = sub.end
        nxt = replace(sub, status="active", start=t, end=t + sub.length())
        if rng.random() < 0.7:
            self.sub_event("customer.subscription.updated", nxt, t)
            self.invoice(nxt, t + rng.choice([0, 1]), paid=True, reason="subscription_cycle")
            return nxt
        first = t + 3600
        if first > self.now:
            return None
        failing = replace(nxt, status="past_due", past_due_since=first)
        self.invoice(failing, first, paid=False, reason="subscription_cycle")
        self.sub_event("customer.subscription.updated", failing, first)
        for attempt, days in ((2, 3), (3, 5)):
            retry = first + days * DAY
            if retry > self.now:
                return None
            if rng.random() < 0.4:  # the retry succeeds
                self.invoice(nxt, retry, paid=True, reason="subscription_cycle", attempt=attempt)
                self.sub_event("customer.subscription.updated", nxt, retry)
                return nxt
            self.invoice(failing, retry, paid=False, reason="subscription_cycle", attempt=attempt)
        give_up = first + 7 * DAY
        if give_up > self.now:
            return None
        if rng.random() < 0.5:
            gone = replace(failing, status="canceled", ended_at=give_up)
            self.sub_event("customer.subscription.deleted", gone, give_up)
        else:
            self.sub_event(
                "customer.subscription.updated", replace(failing, status="unpaid"), give_up
            )
        return None


def build(seed: int, *, user_id: str, tag: str, now: datetime) -> History:
    """The history for ``seed``, for one user; ids carry ``tag``."""
    rng = random.Random(seed)
    end = int(now.timestamp())
    builder = _Builder(rng, user_id, tag, end, new_shape=rng.random() < 0.6)
    # Half the histories end a few days after a monthly renewal, where failed payments, retries
    # and grace periods are still open.
    if rng.random() < 0.5:
        t = end - rng.randint(3600, 400 * DAY)
    else:
        t = end - rng.randint(1, 6) * 30 * DAY - rng.randint(3600, 8 * DAY)
    for _ in range(rng.choice([1, 1, 2])):  # sometimes a second subscription after the first
        if t > end:
            break
        builder.noise(t)
        sub = builder.checkout(t)
        ended = builder.live(sub) if sub is not None else t + DAY
        if ended is None:
            break
        t = ended + rng.randint(DAY, 60 * DAY)
    builder.history.events.sort(key=lambda e: e["created"])  # stable: ties keep Stripe's order
    return builder.history


def at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def realistic_duplicates(
    rng: random.Random, events: list[dict[str, Any]], share: float = 0.3
) -> list[dict[str, Any]]:
    """Every event once, about ``share`` of them twice, shuffled."""
    deliveries = events + [e for e in events if rng.random() < share]
    rng.shuffle(deliveries)
    return deliveries
