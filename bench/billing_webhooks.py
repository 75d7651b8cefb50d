"""Webhook cost per event: signature check, inbox insert, row lock and state change.

Runs the real app over ASGI (no network) on a migrated SQLite file (or PostgreSQL with
--postgres) and times sequential POSTs, interleaved so that load from other processes hits every
case alike:

- baseline: ``GET /healthz``
- an unhandled event type (verify the signature, insert into the inbox, acknowledge)
- ``customer.subscription.updated`` (the above, plus lock the subscription row and fold its
  events again), on subscriptions with a few events and on subscriptions with a year of them
  (``HISTORY`` events, about five a month), since each delivery folds them all
- a duplicate delivery (verify, the insert finds the event, acknowledge)

Then a concurrent storm: ``--storm`` fresh subscription events for 200 subscriptions, a third of
them delivered twice, shuffled, 32 at a time; it prints events per second.

    .venv/bin/python bench/billing_webhooks.py [--requests 1000] [--postgres SERVER_URL]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import orjson

from auth_overhead import scratch_database
from kiban.app import create_app
from kiban.billing import simulate
from kiban.billing.plans import DEFAULT_PLANS_FILE
from kiban.core import clock
from kiban.core.db import create_engine
from kiban.core.migrations import upgrade
from kiban.settings import Settings

SECRET = "whsec_bench_0123456789abcdef"
PRICE = "price_bench_pro"


def _signed(event: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps(event)
    t = int(time.time())
    mac = hmac.new(SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return body, {"Stripe-Signature": f"t={t},v1={mac}", "Content-Type": "application/json"}


def _subscription_event(n: int, created: int) -> dict[str, Any]:
    now = clock.now()
    obj = simulate.subscription_object(
        subscription_id=f"sub_bench_{n}",
        customer_id=f"cus_bench_{n}",
        price_id=PRICE,
        status=random.choice(["active", "past_due", "trialing"]),
        period_start=now,
        period_end=now + timedelta(days=30),
    )
    return simulate.event("customer.subscription.updated", obj, created=created)


HISTORY = 60  # a year of a monthly subscription: renewals, invoices, a plan switch or two
LONG_SUBSCRIPTIONS = 20


def _unhandled() -> dict[str, Any]:
    obj = {"id": simulate.new_id("cus"), "object": "customer"}
    return simulate.event("customer.created", obj, created=int(time.time()))


def _row(name: str, samples: list[float], baseline: float | None) -> str:
    median = statistics.median(samples)
    p95 = statistics.quantiles(samples, n=20)[18]
    extra = "" if baseline is None else f"  +{median - baseline:7.0f} µs  x{median / baseline:.2f}"
    return f"{name:<34} median {median:7.0f} µs  p95 {p95:7.0f} µs{extra}"


async def run(n: int, storm: int, url: str, tmp: Path) -> None:
    engine = create_engine(url)
    await upgrade(engine)
    await engine.dispose()
    text = DEFAULT_PLANS_FILE.read_text()
    head, _, tail = text.rpartition("stripe_price_ids = []")
    plans = tmp / "plans.toml"
    plans.write_text(f'{head}stripe_price_ids = ["{PRICE}"]{tail}')
    settings = Settings(
        env="test",
        database_url=url,
        secret_key="bench-secret-" + "x" * 40,
        stripe_webhook_secret=SECRET,
        plans_file=plans,
        log_level="WARNING",
        _env_file=None,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

            async def post(event: dict[str, Any]) -> None:
                body, headers = _signed(event)
                response = await client.post("/billing/webhook", content=body, headers=headers)
                assert response.status_code == 200, response.text

            duplicate = _unhandled()
            await post(duplicate)
            created = int(time.time()) - 10 * n
            old = created - 10 * HISTORY
            for k in range(HISTORY):
                for s in range(LONG_SUBSCRIPTIONS):
                    await post(_subscription_event(500 + s, old + 10 * k))
            cases: list[Callable[[int], Any]] = [
                lambda i: client.get("/healthz"),
                lambda i: post(_unhandled()),
                lambda i: post(_subscription_event(i % 50, created + i)),
                lambda i: post(_subscription_event(500 + i % LONG_SUBSCRIPTIONS, created + i)),
                lambda i: post(duplicate),
            ]
            for i in range(50):  # warm up
                for case in cases:
                    await case(i)
            samples: list[list[float]] = [[] for _ in cases]
            for i in range(n):
                for k, case in enumerate(cases):
                    start = time.perf_counter()
                    await case(50 + i)
                    samples[k].append((time.perf_counter() - start) * 1e6)

            events = [
                _subscription_event(1000 + i % 200, created + 10 * n + i) for i in range(storm)
            ]
            deliveries = events + random.sample(events, storm // 3)
            random.shuffle(deliveries)
            gate = asyncio.Semaphore(32)

            async def deliver(event: dict[str, Any]) -> None:
                async with gate:
                    await post(event)

            started = time.perf_counter()
            await asyncio.gather(*(deliver(e) for e in deliveries))
            elapsed = time.perf_counter() - started

    baseline = statistics.median(samples[0])
    print(f"billing webhooks, {n} requests each, interleaved, {url.split(':')[0]}")
    print(_row("GET /healthz (baseline)", samples[0], None))
    print(_row("webhook, unhandled type (inbox)", samples[1], baseline))
    print(_row("webhook, subscription.updated", samples[2], baseline))
    long = f"webhook, same, {HISTORY}+ events"
    print(_row(long, samples[3], baseline))
    print(_row("webhook, duplicate delivery", samples[4], baseline))
    print(
        f"storm: {len(deliveries)} deliveries ({storm} events, {storm // 3} duplicates), "
        f"32 concurrent: {elapsed:.2f} s, {len(deliveries) / elapsed:.0f} deliveries/s"
    )


async def main(n: int, storm: int, server_url: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with scratch_database(server_url, Path(tmp)) as url:
            await run(n, storm, url, Path(tmp))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--storm", type=int, default=1500)
    parser.add_argument("--postgres", default=None, help="a PostgreSQL server URL")
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.storm, args.postgres))
