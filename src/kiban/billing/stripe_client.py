"""The one seam to Stripe: the SDK's ``StripeClient``, API version pinned, API base configurable.

Everything kiban asks Stripe goes through ``StripeClient``; tests and local development point
``KIBAN_STRIPE_API_BASE`` at a local server (localstripe, or a stub of the endpoints it lacks)
instead of replacing our code. Results come back as plain dicts, the same shape webhooks carry,
so one set of readers (``billing.snapshot``) serves both.
"""

from __future__ import annotations

from typing import Any

import stripe

from kiban.billing.exceptions import BillingNotConfigured, StripeUnavailable
from kiban.settings import Settings

# Pinned: Stripe changes object shapes between versions (2025-03-31 moved the current period
# onto subscription items). Bump deliberately, with the SDK, after reading the changelog.
STRIPE_API_VERSION = "2026-10-28.endive"


def _plain(obj: Any) -> dict[str, Any]:
    data: dict[str, Any] = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
    return data


def _reason(error: stripe.StripeError) -> str:
    # Connection errors carry no user message; the class name still says what happened.
    return error.user_message or type(error).__name__


class StripeClient:
    """What kiban needs from Stripe, as small async methods."""

    def __init__(
        self,
        secret_key: str,
        *,
        api_base: str | None = None,
        timeout: float = 20.0,
        max_network_retries: int = 2,
    ) -> None:
        self._http = stripe.HTTPXClient(timeout=timeout)
        self.api_base = api_base or stripe.DEFAULT_API_BASE
        self._client = stripe.StripeClient(
            secret_key,
            stripe_version=STRIPE_API_VERSION,
            base_addresses={"api": self.api_base},
            max_network_retries=max_network_retries,
            http_client=self._http,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> StripeClient | None:
        """The Stripe client for these settings, or None when no secret key is configured."""
        if settings.stripe_secret_key is None:
            return None
        return cls(
            settings.stripe_secret_key.get_secret_value(),
            api_base=settings.stripe_api_base,
            timeout=settings.stripe_timeout_seconds,
            max_network_retries=settings.stripe_max_network_retries,
        )

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._http.close_async()  # type: ignore[no-untyped-call]

    async def create_customer(self, *, email: str, user_id: str) -> str:
        """Create the user's Stripe customer; the idempotency key makes a retried call safe."""
        customer = await self._call(
            self._client.v1.customers.create_async(
                params={"email": email, "metadata": {"user_id": user_id}},
                options={"idempotency_key": f"kiban-customer-{user_id}"},
            )
        )
        return str(customer["id"])

    async def create_checkout_session(
        self,
        *,
        customer_id: str,
        price_id: str,
        user_id: str,
        plan: str,
        success_url: str,
        cancel_url: str,
    ) -> tuple[str, str]:
        """A subscription-mode Checkout session; returns (session id, url)."""
        metadata = {"user_id": user_id, "plan": plan}
        session = await self._call(
            self._client.v1.checkout.sessions.create_async(
                params={
                    "mode": "subscription",
                    "customer": customer_id,
                    "client_reference_id": user_id,
                    "line_items": [{"price": price_id, "quantity": 1}],
                    "metadata": metadata,
                    "subscription_data": {"metadata": metadata},
                    "success_url": success_url,
                    "cancel_url": cancel_url,
                }
            )
        )
        return str(session["id"]), str(session["url"])

    async def create_portal_session(self, *, customer_id: str, return_url: str) -> str:
        """A Customer Portal session; returns its url."""
        session = await self._call(
            self._client.v1.billing_portal.sessions.create_async(
                params={"customer": customer_id, "return_url": return_url}
            )
        )
        return str(session["url"])

    async def retrieve_subscription(self, subscription_id: str) -> dict[str, Any] | None:
        """The subscription as Stripe has it now, or None when Stripe does not know it."""
        try:
            sub = await self._client.v1.subscriptions.retrieve_async(subscription_id)
        except stripe.InvalidRequestError as e:
            if e.http_status == 404:
                return None
            raise StripeUnavailable(f"Stripe refused the request: {_reason(e)}") from e
        except stripe.StripeError as e:
            raise StripeUnavailable(f"Stripe is not reachable: {_reason(e)}") from e
        return _plain(sub)

    async def price_exists(self, price_id: str) -> bool:
        """Whether this Stripe account (and mode: test or live) has the price."""
        try:
            await self._client.v1.prices.retrieve_async(price_id)
        except stripe.InvalidRequestError as e:
            if e.http_status == 404:
                return False
            raise StripeUnavailable(f"Stripe refused the request: {_reason(e)}") from e
        except stripe.StripeError as e:
            raise StripeUnavailable(f"Stripe is not reachable: {_reason(e)}") from e
        return True

    async def list_subscriptions(self, customer_id: str) -> list[dict[str, Any]]:
        """Every subscription of the customer, ended ones included."""
        page = await self._call(
            self._client.v1.subscriptions.list_async(
                params={"customer": customer_id, "status": "all", "limit": 100}
            )
        )
        return [dict(s) for s in page.get("data", [])]

    async def create_subscription(
        self, *, customer_id: str, price_id: str, metadata: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Subscribe the customer to a price directly (Checkout does this in production)."""
        # ``plan`` takes a price id as well as a plan id; localstripe understands only ``plan``.
        return await self._call(
            self._client.v1.subscriptions.create_async(
                params={
                    "customer": customer_id,
                    "items": [{"plan": price_id}],
                    "metadata": metadata or {},
                }
            )
        )

    async def set_cancel_at_period_end(self, subscription_id: str, value: bool) -> dict[str, Any]:
        """Schedule (or unschedule) the end of a subscription at its period end."""
        return await self._call(
            self._client.v1.subscriptions.update_async(
                subscription_id, params={"cancel_at_period_end": value}
            )
        )

    async def _call(self, pending: Any) -> dict[str, Any]:
        try:
            return _plain(await pending)
        except stripe.AuthenticationError as e:
            raise BillingNotConfigured(
                "Stripe rejected the configured secret key.",
                hint="Check KIBAN_STRIPE_SECRET_KEY.",
            ) from e
        except stripe.StripeError as e:
            raise StripeUnavailable(f"Stripe could not complete the request: {_reason(e)}") from e
