"""``kiban doctor`` checks for billing: Stripe keys, the webhook secret, the plans' prices."""

from __future__ import annotations

from kiban.billing.exceptions import BillingNotConfigured, StripeUnavailable
from kiban.billing.plans import catalog_for
from kiban.billing.stripe_client import StripeClient
from kiban.core.doctor import DoctorContext, Finding, doctor_check
from kiban.settings import ConfigurationError

_WEBHOOK_FIX = (
    "set KIBAN_STRIPE_WEBHOOK_SECRET to the endpoint's signing secret (Dashboard > Developers > "
    "Webhooks, or the whsec_ that `stripe listen` prints)"
)


def _key_findings(key: str, production: bool) -> list[Finding]:
    if not key.startswith(("sk_", "rk_")):
        return [
            Finding(
                "fail",
                "KIBAN_STRIPE_SECRET_KEY is not a Stripe secret key",
                "it should start with sk_live_, sk_test_ or rk_ (a restricted key)",
                "copy the secret key from Dashboard > Developers > API keys",
            )
        ]
    live = key.startswith(("sk_live_", "rk_live_"))
    if production and not live:
        return [Finding("warn", "a test-mode Stripe key in production", "no real payment happens")]
    if live and not production:
        return [Finding("warn", "a live Stripe key outside production", "real cards are charged")]
    return [Finding("ok", f"Stripe secret key ({'live' if live else 'test'} mode)")]


def _unloadable(error: ConfigurationError) -> Finding:
    return Finding(
        "fail",
        "the plans do not load: kiban refuses to start",
        str(error),
        "fix the plans file (KIBAN_PLANS_FILE) or KIBAN_STRIPE_PRICES as the message says",
    )


@doctor_check
async def check_stripe(ctx: DoctorContext) -> list[Finding]:
    """Stripe billing."""
    settings = ctx.settings
    if settings.stripe_secret_key is None:
        off = Finding(
            "warn" if settings.env == "production" else "ok",
            "billing is off: KIBAN_STRIPE_SECRET_KEY is not set",
            "everyone stays on the default plan unless an admin sets one",
        )
        try:
            catalog_for(settings)  # checked at start-up even with billing off
        except ConfigurationError as e:
            return [off, _unloadable(e)]
        return [off]
    findings = _key_findings(
        settings.stripe_secret_key.get_secret_value(), settings.env == "production"
    )
    secret = settings.stripe_webhook_secret
    if secret is None or not secret.get_secret_value().strip():
        findings.append(
            Finding(
                "fail",
                "KIBAN_STRIPE_WEBHOOK_SECRET is not set",
                "POST /billing/webhook answers 503: subscriptions never reach kiban",
                _WEBHOOK_FIX,
            )
        )
    elif not all(s.strip().startswith("whsec_") for s in secret.get_secret_value().split(",")):
        findings.append(
            Finding("warn", "the webhook secret does not start with whsec_", "", _WEBHOOK_FIX)
        )
    else:
        findings.append(Finding("ok", "webhook signing secret"))
    try:
        catalog = catalog_for(settings)
    except ConfigurationError as e:
        return [*findings, _unloadable(e)]
    prices = [
        (plan.name, price) for plan in catalog.plans.values() for price in plan.stripe_price_ids
    ]
    if not prices:
        findings.append(
            Finding(
                "warn",
                "no plan lists a Stripe price: nothing can be bought",
                fix='set KIBAN_STRIPE_PRICES (e.g. "pro=price_...") or add stripe_price_ids '
                "to a plan in your plans file (KIBAN_PLANS_FILE)",
            )
        )
        return findings
    stripe = StripeClient.from_settings(settings)
    assert stripe is not None
    try:
        for plan, price in prices:
            if await stripe.price_exists(price):
                findings.append(Finding("ok", f"price {price} (plan {plan}) exists in Stripe"))
            else:
                findings.append(
                    Finding(
                        "fail",
                        f"price {price} (plan {plan}) does not exist in this Stripe account",
                        "a test-mode price with a live key, or the other way round?",
                        "copy the price id (price_...) from Dashboard > Product catalog",
                    )
                )
    except (StripeUnavailable, BillingNotConfigured) as e:
        findings.append(
            Finding("fail", "Stripe could not be asked about the prices", e.message, e.hint or "")
        )
    finally:
        await stripe.aclose()
    return findings
