"""Stripe webhook signatures, verified by us on the raw body.

Stripe signs ``"{t}.{raw body}"`` with HMAC-SHA256 under the endpoint's secret and sends
``Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]``. We accept the payload when one
``v1`` matches one of our secrets (compared in constant time) and ``t`` is within the tolerance of
our clock, in either direction. The SDK's own verifier is not used: this is twenty lines we can
read, test against payloads we sign ourselves, and point at ``kiban.core.clock``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import orjson

from kiban.billing import exceptions as exc
from kiban.core import clock

# Stripe's event payloads are a few kilobytes (a subscription with its items, an invoice with its
# lines); the app refuses bigger bodies before reading them (kiban.core.body_limit).
WEBHOOK_MAX_BYTES = 1024 * 1024


def compute_signature(secret: str, timestamp: int, payload: bytes) -> str:
    """The hex HMAC-SHA256 of ``"{timestamp}.{payload}"`` under ``secret``."""
    signed = str(timestamp).encode() + b"." + payload
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign_payload(secret: str, payload: bytes, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header value for ``payload`` (``kiban stripe simulate`` uses it)."""
    t = int(clock.timestamp()) if timestamp is None else timestamp
    return f"t={t},v1={compute_signature(secret, t, payload)}"


def _parse_header(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise exc.SignatureMalformed() from None
        elif key == "v1" and value:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise exc.SignatureMalformed()
    return timestamp, signatures


def verify_signature(
    payload: bytes, header: str | None, secrets: list[str], *, tolerance: int
) -> int:
    """Check ``header`` against the raw ``payload``; return its timestamp or raise a 400."""
    if not header:
        raise exc.SignatureMissing()
    timestamp, signatures = _parse_header(header)
    if abs(clock.timestamp() - timestamp) > tolerance:
        raise exc.SignatureExpired(
            extra={"tolerance_seconds": tolerance},
        )
    # As bytes: compare_digest raises TypeError on a str with non-ASCII characters (a 500).
    candidates = [candidate.encode() for candidate in signatures]
    for secret in secrets:
        expected = compute_signature(secret, timestamp, payload).encode()
        # compare_digest for every candidate: the time taken says nothing about the secret.
        if any(hmac.compare_digest(expected, candidate) for candidate in candidates):
            return timestamp
    raise exc.SignatureInvalid()


@dataclass(frozen=True)
class StripeEvent:
    """The parts of a Stripe event we route on; ``payload`` is the whole event as received."""

    id: str
    type: str
    created: int
    livemode: bool
    object: dict[str, Any]
    payload: dict[str, Any]


def parse_event(payload: bytes) -> StripeEvent:
    """Parse a verified body into a ``StripeEvent``, or raise ``InvalidEvent`` saying what's off."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise exc.InvalidEvent("The payload is not JSON.") from None
    if not isinstance(data, dict) or data.get("object") not in (None, "event"):
        raise exc.InvalidEvent()
    event_id, event_type, created = data.get("id"), data.get("type"), data.get("created")
    obj = data.get("data", {}).get("object") if isinstance(data.get("data"), dict) else None
    if not isinstance(event_id, str) or not event_id:
        raise exc.InvalidEvent("The event has no id.")
    if not isinstance(event_type, str) or not event_type:
        raise exc.InvalidEvent("The event has no type.")
    if not isinstance(created, int) or isinstance(created, bool):
        raise exc.InvalidEvent("The event has no integer 'created' time.")
    if not isinstance(obj, dict):
        raise exc.InvalidEvent("The event has no data.object.")
    return StripeEvent(
        id=event_id,
        type=event_type,
        created=created,
        livemode=bool(data.get("livemode", False)),
        object=obj,
        payload=data,
    )
