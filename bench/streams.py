"""Many streams opened at once: time to first token through kiban against the direct path.

The fake upstream streams each answer word by word (``--chunk-delay-ms`` between chunks), so the
streams overlap; ``--streams`` of them are opened at the same moment, straight to the upstream
and through kiban's ``/v1/chat/completions`` (one worker, API key, quota, ledger), in interleaved
rounds. Reported per path: time to first token (p50, p99), time to the last byte, failures; then
kiban's added TTFT, its resident memory at peak, and whether every stream left exactly one ledger
record with the quota's ``used`` equal to the ledger's tokens.

    .venv/bin/python bench/streams.py [--streams 1000] [--rounds 2] [--chunk-delay-ms 20]
        [--database-url URL] [--redis-url URL]

Goal (issue 13): all complete and exact; TTFT p50 at most 500 ms above the direct path.
The client is Python (aiohttp): it costs both paths alike, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from gateway_overhead import BODY, free_port, generous_plans, percentile, prepare, start, wait_for
from kiban.core.db import create_engine
from kiban.models import QuotaPeriod, UsageRecord, User
from saturation import _logged, peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]


async def one_stream(
    session: aiohttp.ClientSession, url: str, token: str, gate: asyncio.Event
) -> tuple[float, float] | None:
    """(TTFT, total) in ms for one stream opened when ``gate`` opens; None if it failed."""
    body = orjson.dumps({**BODY, "stream": True})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    await gate.wait()
    started = time.perf_counter()
    first = None
    done = False
    try:
        async with session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                await response.read()
                return None
            async for line in response.content:
                if first is None and line.startswith(b"data:") and b'"content"' in line:
                    first = time.perf_counter()
                if line.startswith(b"data: [DONE]"):
                    done = True
    except aiohttp.ClientError:
        return None
    if first is None or not done:
        return None
    return (first - started) * 1000, (time.perf_counter() - started) * 1000


async def burst(url: str, token: str, n: int) -> list[tuple[float, float] | None]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        gate = asyncio.Event()
        tasks = [asyncio.create_task(one_stream(session, url, token, gate)) for _ in range(n)]
        await asyncio.sleep(0.2)  # every task waits at the gate
        gate.set()
        return await asyncio.gather(*tasks)


async def ledger_check(database_url: str) -> tuple[int, int, int, int]:
    """(records, ledger tokens, quota used, quota reserved) of the bench users."""
    engine = create_engine(database_url)
    bench = select(User.id).where(User.email.like("bench-%"))
    async with engine.connect() as conn:
        records, tokens = (
            await conn.execute(
                select(func.count(), func.coalesce(func.sum(UsageRecord.total_tokens), 0)).where(
                    UsageRecord.user_id.in_(bench)
                )
            )
        ).one()
        used, reserved = (
            await conn.execute(
                select(
                    func.coalesce(func.sum(QuotaPeriod.used_tokens), 0),
                    func.coalesce(func.sum(QuotaPeriod.reserved_tokens), 0),
                ).where(QuotaPeriod.user_id.in_(bench))
            )
        ).one()
    await engine.dispose()
    return int(records), int(tokens), int(used), int(reserved)


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="kiban-streams-"))
    database_url = args.database_url or f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    key = await prepare(database_url)
    before = await ledger_check(database_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIBAN_", "OPENAI_"))}
    up_port, kiban_port = free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/v1"
    env.update(
        KIBAN_ENV="development",
        KIBAN_DATABASE_URL=database_url,
        KIBAN_SECRET_KEY="bench-secret-key-that-is-long-enough-0123456789",
        KIBAN_PLANS_FILE=str(generous_plans(workdir)),
        KIBAN_OPENAI_BASE_URL=upstream_url,
        KIBAN_OPENAI_API_KEY="sk-bench",
        KIBAN_LOG_LEVEL="WARNING",
        KIBAN_LOG_JSON="true",
    )
    if args.redis_url:
        env.update(KIBAN_REDIS_URL=args.redis_url, KIBAN_QUOTA_BACKEND="redis")
    py = sys.executable
    upstream = [py, str(ROOT / "tests/fake_upstream.py"), "--port", str(up_port)]
    processes = [start([*upstream, "--chunk-delay-ms", str(args.chunk_delay_ms)], env)]
    kiban_log = workdir / "kiban.log"
    kiban = _logged(
        [
            *(py, "-m", "uvicorn", "--factory", "kiban.app:create_app", "--no-access-log"),
            *("--host", "127.0.0.1", "--port", str(kiban_port), "--log-level", "warning"),
        ],
        env,
        kiban_log,
    )
    processes.append(kiban)
    targets = {
        "direct": (f"{upstream_url}/chat/completions", "sk-bench"),
        "kiban": (f"http://127.0.0.1:{kiban_port}/v1/chat/completions", key),
    }
    results: dict[str, list[list[tuple[float, float] | None]]] = {name: [] for name in targets}
    try:
        wait_for(f"{upstream_url}/models")
        wait_for(f"http://127.0.0.1:{kiban_port}/healthz")
        for url, token in targets.values():  # warm up
            await burst(url, token, 20)
        for _ in range(args.rounds):
            for name, (url, token) in targets.items():
                spy = None
                if name == "kiban" and args.py_spy:  # py-spy's raw (collapsed) stacks, appended
                    spy = await asyncio.create_subprocess_exec(
                        *(args.py_spy, "record", "-p", str(kiban.pid), "-r", "200", "--gil"),
                        *("--format", "raw", "-o", str(workdir / "profile.txt"), "-d", "30"),
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    await asyncio.sleep(1)
                results[name].append(await burst(url, token, args.streams))
                if spy is not None:
                    spy.send_signal(2)  # SIGINT: py-spy writes what it has
                    await asyncio.wait_for(spy.wait(), 30)
                    print(f"profile of kiban: {workdir / 'profile.txt'}")
        rss = peak_rss_mb(kiban.pid)
    finally:
        for process in reversed(processes):
            process.terminate()  # SIGTERM: kiban finishes what is in flight
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()

    print(
        f"{args.streams} streams at once, {args.rounds} interleaved rounds, "
        f"upstream chunk every {args.chunk_delay_ms:g} ms (medians over rounds, ms)"
    )
    print(f"  {'':8} {'ttft p50':>9} {'ttft p99':>9} {'last p50':>9} {'failed':>7}")
    p50s: dict[str, float] = {}
    for name, rounds in results.items():
        ttft50, ttft99, last50, failed = [], [], [], 0
        for run in rounds:
            ok = [r for r in run if r is not None]
            failed += len(run) - len(ok)
            ttft = [r[0] for r in ok]
            ttft50.append(statistics.median(ttft))
            ttft99.append(percentile(ttft, 0.99))
            last50.append(statistics.median(r[1] for r in ok))
        p50s[name] = statistics.median(ttft50)
        print(
            f"  {name:8} {p50s[name]:9.1f} {statistics.median(ttft99):9.1f}"
            f" {statistics.median(last50):9.1f} {failed:7d}"
        )
    added = p50s["kiban"] - p50s["direct"]
    print(f"  added TTFT p50: {added:.1f} ms (goal <= 500 ms)")
    print(f"  kiban peak resident memory: {rss:.0f} MB")
    records, tokens, used, reserved = (
        after - then for after, then in zip(await ledger_check(database_url), before, strict=True)
    )
    sent = args.rounds * args.streams + 20
    answered = sent - sum(r is None for run in results["kiban"] for r in run)
    exact = records == sent and used == tokens and reserved == 0
    shown = make_url(database_url).render_as_string(hide_password=True)
    print(
        f"ledger: {records} records for {sent} streams ({answered} complete), "
        f"{tokens} tokens; quota used {used}, reserved {reserved}: "
        f"{'exact' if exact else 'MISMATCH'} ({shown}{', Redis' if args.redis_url else ''})"
    )
    print(f"kiban's log: {kiban_log}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--chunk-delay-ms", type=float, default=20.0)
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--py-spy", help="a py-spy binary: profile kiban during its bursts")
    asyncio.run(main(parser.parse_args()))
