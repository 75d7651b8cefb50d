"""Failover: two deployments of one model, one of them failing every request.

Processes on loopback: two fake upstreams (``tests/fake_upstream.py``), deployment ``bad``
answering every request with HTTP 500 (or a port nothing listens on: ``--fault refused``) and
``good`` healthy; kiban served by uvicorn (one worker, SQLite, API keys, the real admission and
ledger, the shipped breaker settings unless overridden); and this load generator. Equal weights.

It sends ``--requests`` chat completions at concurrency 1, then a burst at ``--concurrency``, and
prints from kiban's responses and its ledger:

- the success rate (goal: 100%), and that every record names the deployment that served it;
- the share of upstream attempts the failing deployment took once its breaker had opened (the
  requests after the first ``--warmup``; goal: under 5%), and in all;
- the added latency: kiban's p50 with one deployment failing minus its p50 with both healthy
  (a second run), and the p50 of the requests that were failed over (attempts > 1).

    .venv/bin/python bench/failover.py [--requests 2000] [--concurrency 32] [--fault 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from sqlalchemy import select

from gateway_overhead import (
    BODY,
    free_port,
    generous_plans,
    kiban_command,
    percentile,
    prepare,
    start,
    wait_for,
)
from kiban.core.db import create_engine, create_sessionmaker
from kiban.models import UsageRecord

ROOT = Path(__file__).resolve().parents[1]


def models_file(workdir: Path, bad_url: str, good_url: str) -> Path:
    path = workdir / "models.toml"
    path.write_text(
        f'[deployments.bad]\nbase_url = "{bad_url}"\n\n'
        f'[deployments.good]\nbase_url = "{good_url}"\n\n'
        '[models."gpt-4o-mini"]\ndeployments = ["bad", "good"]\n'
        "context_window = 128000\nmax_output_tokens = 16384\n"
    )
    return path


async def ledger(database_url: str) -> list[UsageRecord]:
    engine = create_engine(database_url)
    async with create_sessionmaker(engine)() as session:
        records = list((await session.scalars(select(UsageRecord).order_by(UsageRecord.id))).all())
    await engine.dispose()
    return records


async def run(
    *, failing: bool, fault: str, n: int, concurrency: int
) -> tuple[list[float], int, int, list[UsageRecord]]:
    """One kiban with the two deployments: latencies (ms, sequential), successes, sent, ledger."""
    workdir = Path(tempfile.mkdtemp(prefix="kiban-failover-"))
    database_url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    key = await prepare(database_url)
    good_port, bad_port, kiban_port = free_port(), free_port(), free_port()
    good_url = f"http://127.0.0.1:{good_port}/v1"
    bad_url = f"http://127.0.0.1:{bad_port}/v1"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIBAN_", "OPENAI_"))}
    env.update(
        KIBAN_ENV="development",
        KIBAN_DATABASE_URL=database_url,
        KIBAN_SECRET_KEY="bench-secret-key-that-is-long-enough-0123456789",
        KIBAN_PLANS_FILE=str(generous_plans(workdir)),
        KIBAN_MODELS_FILE=str(models_file(workdir, bad_url, good_url)),
        KIBAN_LOG_JSON="true",
        KIBAN_LOG_LEVEL="WARNING",
    )
    python, fake = sys.executable, str(ROOT / "tests/fake_upstream.py")
    processes = [start([python, fake, "--port", str(good_port)], env)]
    if not failing:
        processes.append(start([python, fake, "--port", str(bad_port)], env))
    elif fault == "500":
        processes.append(
            start([python, fake, "--port", str(bad_port), "--always-status", "500"], env)
        )
    # fault "refused": nothing listens on bad_port.
    kiban = start(kiban_command(kiban_port), env)
    url = f"http://127.0.0.1:{kiban_port}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {key}"}
    latencies: list[float] = []
    ok = sent = 0
    try:
        wait_for(f"{good_url}/models")
        wait_for(f"http://127.0.0.1:{kiban_port}/healthz")
        async with httpx.AsyncClient(timeout=60) as client:
            for _ in range(n):
                started = time.perf_counter()
                response = await client.post(url, json=BODY, headers=headers)
                latencies.append((time.perf_counter() - started) * 1000)
                sent += 1
                ok += response.status_code == 200
            limits = httpx.Limits(max_connections=concurrency)
            async with httpx.AsyncClient(timeout=60, limits=limits) as burst:
                responses = await asyncio.gather(
                    *(burst.post(url, json=BODY, headers=headers) for _ in range(n // 2))
                )
            sent += len(responses)
            ok += sum(r.status_code == 200 for r in responses)
    finally:
        kiban.terminate()  # SIGTERM: kiban writes its ledger out on shutdown
        kiban.wait(30)
        for process in processes:
            process.terminate()
            process.wait(10)
    return latencies, ok, sent, await ledger(database_url)


async def main(n: int, concurrency: int, fault: str, warmup: int) -> None:
    healthy_ms, _, _, _ = await run(failing=False, fault=fault, n=n, concurrency=concurrency)
    failing_ms, ok, sent, records = await run(
        failing=True, fault=fault, n=n, concurrency=concurrency
    )
    print(f"two deployments, 'bad' failing every request ({fault}), {sent} requests")
    print(f"  success: {ok}/{sent} = {ok / sent:.2%} (goal 100%)")
    served = Counter(r.deployment for r in records)
    named = sum(1 for r in records if r.status == "ok" and r.deployment == "good")
    print(f"  ledger: {len(records)} records, served by {dict(served)}; {named} name 'good'")
    # Every attempt beyond a record's first went to the failing deployment (good never fails).
    after = records[warmup:]
    bad_after = sum(r.attempts - 1 for r in after)
    all_after = sum(r.attempts for r in after)
    bad_all = sum(r.attempts - 1 for r in records)
    print(
        f"  attempts on 'bad' after the first {warmup} requests: {bad_after}/{all_after} = "
        f"{bad_after / all_after:.2%} (goal < 5%); in all: {bad_all}/"
        f"{sum(r.attempts for r in records)}"
    )
    healthy_p50, failing_p50 = statistics.median(healthy_ms), statistics.median(failing_ms)
    print(
        f"  concurrency 1 p50: {healthy_p50:.3f} ms both healthy, {failing_p50:.3f} ms one "
        f"failing: added {failing_p50 - healthy_p50:+.3f} ms; "
        f"p99 {percentile(healthy_ms, 0.99):.3f} / {percentile(failing_ms, 0.99):.3f} ms"
    )
    over = [r.response_time_ms for r in records if r.attempts > 1]
    if over:
        print(
            f"  {len(over)} requests failed over (attempts > 1): p50 "
            f"{statistics.median(over):.3f} ms in kiban (ledger response_time_ms)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--fault", choices=["500", "refused"], default="500")
    parser.add_argument("--warmup", type=int, default=10)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.requests, arguments.concurrency, arguments.fault, arguments.warmup))
