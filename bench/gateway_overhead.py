"""What kiban adds to an AI call: the same chat completion sent straight to an OpenAI-compatible
server and through kiban's ``/v1/chat/completions``, in the same run.

Three processes on loopback: the fake upstream (``tests/fake_upstream.py``), kiban served by
uvicorn (one worker, SQLite, API-key authentication, the real plans/quota admission, the usage
ledger on, access log on), and this load generator. Phases:

- concurrency 1: requests interleaved direct/kiban, p50 and p99 latency, and the added p50;
- saturation: ``--concurrency`` clients for ``--seconds`` each way: requests/s, p50, p99, ratio.

It checks at the end that kiban's ledger holds exactly one record per request it answered.

    .venv/bin/python bench/gateway_overhead.py [--requests 2000] [--concurrency 32] [--seconds 5]

Goal (issue 3): added p50 under 1.5 ms, and throughput within 2x of the direct path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import func, select

from kiban.auth.api_keys import create_api_key
from kiban.auth.passwords import hash_password
from kiban.core.db import create_engine, create_sessionmaker, session_scope
from kiban.core.migrations import upgrade
from kiban.models import UsageRecord, User

ROOT = Path(__file__).resolve().parents[1]
BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say something short about foxes."}],
    "max_tokens": 64,
}


def generous_plans(workdir: Path) -> Path:
    """The shipped plans with limits no bench reaches: they measure the admission's cost, not its
    refusals."""
    text = (Path(__file__).resolve().parents[1] / "src/kiban/billing/plans.toml").read_text()
    for field, value in (
        ("monthly_tokens", "1_000_000_000_000"),
        ("monthly_cost_usd", "1_000_000.0"),
        ("requests_per_minute", "100_000_000"),
        ("tokens_per_minute", "1_000_000_000_000"),
    ):
        text = re.sub(rf"^{field} = .*$", f"{field} = {value}", text, flags=re.M)
    path = workdir / "plans.toml"
    path.write_text(text)
    return path


def kiban_command(port: int) -> list[str]:
    """kiban served by uvicorn on loopback, one worker, no access log (the benches' server)."""
    return [
        *(sys.executable, "-m", "uvicorn", "--factory", "kiban.app:create_app"),
        *("--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def prepare(database_url: str) -> str:
    """Migrate the database and create a user with an API key; return the key."""
    engine = create_engine(database_url)
    await upgrade(engine)
    async with session_scope(create_sessionmaker(engine)) as session:
        email = f"bench-{uuid.uuid4().hex[:8]}@example.com"  # a reused database keeps its users
        user = User(email=email, password_hash=hash_password("bench-password-1"))
        session.add(user)
        await session.flush()
        key = (await create_api_key(session, user, "bench")).plaintext
    await engine.dispose()
    return key


async def count_records(database_url: str) -> int:
    engine = create_engine(database_url)
    async with engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(UsageRecord))).scalar_one()
    await engine.dispose()
    return int(count)


async def sequential(
    client: httpx.AsyncClient, targets: list[tuple[str, dict[str, str]]], n: int
) -> list[list[float]]:
    """Interleaved latencies (ms) per target, so background noise hits both alike."""
    for url, headers in targets * 200:  # warm up connections, caches, the JIT-less interpreter
        (await client.post(url, json=BODY, headers=headers)).raise_for_status()
    samples: list[list[float]] = [[] for _ in targets]
    for _ in range(n):
        for i, (url, headers) in enumerate(targets):
            start = time.perf_counter()
            response = await client.post(url, json=BODY, headers=headers)
            samples[i].append((time.perf_counter() - start) * 1000)
            response.raise_for_status()
    return samples


async def saturate(
    url: str, headers: dict[str, str], concurrency: int, seconds: float
) -> tuple[int, list[float]]:
    """Requests completed and their latencies (ms) with `concurrency` clients for `seconds`."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        latencies: list[float] = []
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < stop:
                start = time.perf_counter()
                response = await client.post(url, json=BODY, headers=headers)
                latencies.append((time.perf_counter() - start) * 1000)
                response.raise_for_status()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), latencies


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def main(n: int, concurrency: int, seconds: float) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="kiban-bench-"))
    database_url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    key = await prepare(database_url)
    plans = (ROOT / "src/kiban/billing/plans.toml").read_text()
    # Generous limits: this measures the admission's cost, not its refusals.
    plans = re.sub(
        r"^monthly_tokens = .*$", "monthly_tokens = 1_000_000_000_000", plans, flags=re.M
    )
    plans = re.sub(r"^monthly_cost_usd = .*$", "monthly_cost_usd = 1_000_000.0", plans, flags=re.M)
    plans = re.sub(
        r"^requests_per_minute = .*$", "requests_per_minute = 10_000_000", plans, flags=re.M
    )
    plans = re.sub(
        r"^tokens_per_minute = .*$", "tokens_per_minute = 1_000_000_000_000", plans, flags=re.M
    )
    (workdir / "plans.toml").write_text(plans)

    upstream_port, kiban_port = free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIBAN_", "OPENAI_"))}
    env.update(
        KIBAN_ENV="development",
        KIBAN_DATABASE_URL=database_url,
        KIBAN_SECRET_KEY="bench-secret-key-that-is-long-enough-0123456789",
        KIBAN_PLANS_FILE=str(workdir / "plans.toml"),
        KIBAN_OPENAI_BASE_URL=upstream_url,
        KIBAN_OPENAI_API_KEY="sk-bench",
        KIBAN_LOG_JSON="true",
    )
    python = sys.executable
    upstream = start(
        [python, str(ROOT / "tests/fake_upstream.py"), "--port", str(upstream_port)], env
    )
    kiban = start(kiban_command(kiban_port), env)
    try:
        wait_for(f"http://127.0.0.1:{upstream_port}/v1/models")
        wait_for(f"http://127.0.0.1:{kiban_port}/healthz")
        direct = (f"{upstream_url}/chat/completions", {"Authorization": "Bearer sk-bench"})
        gateway = (
            f"http://127.0.0.1:{kiban_port}/v1/chat/completions",
            {"Authorization": f"Bearer {key}"},
        )

        async with httpx.AsyncClient(timeout=30) as client:
            direct_ms, kiban_ms = await sequential(client, [direct, gateway], n)
        print(f"concurrency 1, {n} requests each (ms)")
        print(f"  {'':8} {'p50':>8} {'p99':>8}")
        for name, samples in (("direct", direct_ms), ("kiban", kiban_ms)):
            print(f"  {name:8} {statistics.median(samples):8.3f} {percentile(samples, 0.99):8.3f}")
        added = statistics.median(kiban_ms) - statistics.median(direct_ms)
        print(f"  added p50: {added:.3f} ms (goal < 1.5 ms)")

        print(f"saturation, {concurrency} concurrent clients, {seconds:.0f} s each")
        d_count, d_lat = await saturate(direct[0], direct[1], concurrency, seconds)
        k_count, k_lat = await saturate(gateway[0], gateway[1], concurrency, seconds)
        d_rps, k_rps = d_count / seconds, k_count / seconds
        print(f"  {'':8} {'req/s':>8} {'p50':>8} {'p99':>8}")
        for name, rps, lat in (("direct", d_rps, d_lat), ("kiban", k_rps, k_lat)):
            p50, p99 = statistics.median(lat), percentile(lat, 0.99)
            print(f"  {name:8} {rps:8.0f} {p50:8.2f} {p99:8.2f}")
        print(f"  throughput ratio direct/kiban: {d_rps / k_rps:.2f}x (goal <= 2x)")
    finally:
        kiban.terminate()  # SIGTERM: kiban flushes its ledger on shutdown
        kiban.wait(30)
        upstream.terminate()
        upstream.wait(10)
    expected = 200 + n + k_count
    recorded = await count_records(database_url)
    verdict = "ok" if recorded == expected else "MISMATCH"
    print(f"ledger: {recorded} records for {expected} kiban requests ({verdict})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.requests, arguments.concurrency, arguments.seconds))
