"""Billing: plans and entitlements, Stripe Checkout and Portal, the webhook inbox and the
subscription state folded from it (decision 0043).

What other domains use: the plan catalog and which plan and period a user has now
(``resolve_entitlement``), the Stripe client, and what the operator pages show and do (the
subscription and inbox pages, re-applying an event, the inbox's outcomes).
"""

from kiban.billing.dependencies import PlanCatalogDep
from kiban.billing.entitlements import Entitlement, resolve_entitlement, unsubscribed_entitlement
from kiban.billing.exceptions import (
    BillingNotConfigured,
    NoBillingAccount,
    StripeUnavailable,
    UnknownEvent,
)
from kiban.billing.fold import FAILED, OUTCOMES, PENDING, UNMATCHED
from kiban.billing.inbox import reapply_event
from kiban.billing.operator import inbox_page, subscription_page
from kiban.billing.plans import DocumentLimits, Plan, PlanCatalog
from kiban.billing.repository import customer_of_user, inbox_event
from kiban.billing.service import grace, open_portal, require_stripe, subscription_view
from kiban.billing.stripe_client import StripeClient

__all__ = [
    "FAILED",
    "OUTCOMES",
    "PENDING",
    "UNMATCHED",
    "BillingNotConfigured",
    "DocumentLimits",
    "Entitlement",
    "NoBillingAccount",
    "Plan",
    "PlanCatalog",
    "PlanCatalogDep",
    "StripeClient",
    "StripeUnavailable",
    "UnknownEvent",
    "customer_of_user",
    "grace",
    "inbox_event",
    "inbox_page",
    "open_portal",
    "reapply_event",
    "require_stripe",
    "resolve_entitlement",
    "subscription_page",
    "subscription_view",
    "unsubscribed_entitlement",
]
