"""Billing errors, each with its HTTP status and stable code.

Hierarchy::

    AppError
    ├── BadRequest
    │   ├── SignatureMissing        400 signature_missing        no Stripe-Signature header
    │   ├── SignatureMalformed      400 signature_malformed      header without t= and v1=
    │   ├── SignatureExpired        400 signature_expired        timestamp outside the tolerance
    │   ├── SignatureInvalid        400 signature_invalid        no v1 signature matches
    │   └── InvalidEvent            400 invalid_event            signed, but not a Stripe event
    ├── NotFound
    │   ├── UnknownPlan             404 unknown_plan
    │   ├── NoBillingAccount        404 no_billing_account       portal before any checkout
    │   └── UnknownEvent            404 unknown_event            not in the webhook inbox
    ├── Conflict
    │   ├── PlanNotPurchasable      409 plan_not_purchasable     the plan has no Stripe price
    │   └── AlreadySubscribed       409 already_subscribed       use the portal to change plans
    ├── StripeUnavailable           502 stripe_error             Stripe failed or refused
    └── ServiceUnavailable
        ├── BillingNotConfigured    503 billing_not_configured   KIBAN_STRIPE_SECRET_KEY unset
        └── WebhookNotConfigured    503 webhook_not_configured   KIBAN_STRIPE_WEBHOOK_SECRET unset
"""

from __future__ import annotations

from kiban.core.errors import AppError, BadRequest, Conflict, NotFound, ServiceUnavailable


class SignatureMissing(BadRequest):
    code = "signature_missing"
    default_message = "The Stripe-Signature header is missing."


class SignatureMalformed(BadRequest):
    code = "signature_malformed"
    default_message = "The Stripe-Signature header has no timestamp (t=) or no v1 signature."


class SignatureExpired(BadRequest):
    code = "signature_expired"
    default_message = "The Stripe-Signature timestamp is outside the accepted tolerance."
    default_hint = "Check the server clock; replayed or delayed deliveries are refused."


class SignatureInvalid(BadRequest):
    code = "signature_invalid"
    default_message = "No Stripe-Signature v1 signature matches the payload."
    default_hint = "Check that KIBAN_STRIPE_WEBHOOK_SECRET is this endpoint's signing secret."


class InvalidEvent(BadRequest):
    code = "invalid_event"
    default_message = "The payload is not a Stripe event."


class UnknownPlan(NotFound):
    code = "unknown_plan"
    default_message = "There is no such plan."


class NoBillingAccount(NotFound):
    code = "no_billing_account"
    default_message = "You have no billing account yet."
    default_hint = "Start a subscription with POST /billing/checkout first."


class UnknownEvent(NotFound):
    code = "unknown_event"
    default_message = "The webhook inbox has no such event."


class PlanNotPurchasable(Conflict):
    code = "plan_not_purchasable"
    default_message = "This plan cannot be bought."
    default_hint = "The operator must list the plan's Stripe price ids in the plans file."


class AlreadySubscribed(Conflict):
    code = "already_subscribed"
    default_message = "You already have a paid subscription."
    default_hint = "Change or cancel it in the customer portal (POST /billing/portal)."


class StripeUnavailable(AppError):
    status_code = 502
    code = "stripe_error"
    default_message = "Stripe could not complete the request."


class BillingNotConfigured(ServiceUnavailable):
    code = "billing_not_configured"
    default_message = "Billing is not configured on this server."
    default_hint = "Set KIBAN_STRIPE_SECRET_KEY."


class WebhookNotConfigured(ServiceUnavailable):
    code = "webhook_not_configured"
    default_message = "Stripe webhooks are not configured on this server."
    default_hint = "Set KIBAN_STRIPE_WEBHOOK_SECRET to the endpoint's signing secret (whsec_...)."
