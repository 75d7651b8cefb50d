"""What ``/v1/messages`` adds over ``/v1/chat/completions``: both surfaces through kiban, in front
of the same upstreams, at concurrency 1, interleaved in one run, JSON and streamed.

Four processes on loopback: the fake OpenAI-compatible upstream (``tests/fake_upstream.py``),
the fake Anthropic server (``tests/fake_anthropic.py``), kiban served by uvicorn (one worker,
SQLite, API-key authentication, the real plans/quota admission, the ledger on), and this load
generator. For each upstream kind (``openai``: gpt-4o-mini; ``anthropic``: claude-haiku-4-5) and
each mode (JSON; a stream read to its end), the same prompt is sent straight to the upstream, to
kiban's chat surface and to its messages surface, round-robin, and the medians are printed with
each surface's added latency (kiban minus direct) and the difference between the two.

    .venv/bin/python bench/messages_overhead.py [--requests 1000]

Goal (issue 15): ``/v1/messages`` within 0.5 ms of ``/v1/chat/completions`` at concurrency 1,
streaming included. It checks at the end that the ledger holds one record per kiban request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx

from gateway_overhead import count_records, free_port, kiban_command, prepare, start, wait_for

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Say something short about foxes."
WARMUP = 200


def targets(
    kind: str, upstream: str, kiban: str, key: str, *, stream: bool
) -> list[tuple[str, str, dict[str, str], dict[str, object]]]:
    """(name, url, headers, body): direct to the upstream, kiban's chat, kiban's messages."""
    model = "gpt-4o-mini" if kind == "openai" else "claude-haiku-4-5"
    chat = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 64}
    message = {**chat, "max_tokens": 64}
    if stream:
        chat = {**chat, "stream": True}
        message = {**message, "stream": True}
    auth = {"Authorization": f"Bearer {key}"}
    if kind == "openai":
        direct = (
            "direct",
            f"{upstream}/v1/chat/completions",
            {"Authorization": "Bearer sk-bench"},
            {**chat, "stream_options": {"include_usage": True}} if stream else chat,
        )
    else:
        direct = (
            "direct",
            f"{upstream}/v1/messages",
            {"x-api-key": "sk-bench", "anthropic-version": "2023-06-01"},
            {**message, "model": model},
        )
    return [
        direct,
        ("chat", f"{kiban}/v1/chat/completions", auth, chat),
        ("messages", f"{kiban}/v1/messages", {**auth, "anthropic-version": "2023-06-01"}, message),
    ]


def sender(client: httpx.AsyncClient, *, stream: bool) -> Callable[..., Awaitable[None]]:
    async def once(url: str, headers: dict[str, str], body: dict[str, object]) -> None:
        if not stream:
            (await client.post(url, json=body, headers=headers)).raise_for_status()
            return
        async with client.stream("POST", url, json=body, headers=headers) as response:
            response.raise_for_status()
            async for _ in response.aiter_raw():
                pass

    return once


async def interleaved(
    client: httpx.AsyncClient,
    plan: list[tuple[str, str, dict[str, str], dict[str, object]]],
    n: int,
    *,
    stream: bool,
) -> dict[str, list[float]]:
    send = sender(client, stream=stream)
    for _, url, headers, body in plan * WARMUP:
        await send(url, headers, body)
    samples: dict[str, list[float]] = {name: [] for name, *_ in plan}
    for i in range(n):
        # Rotate the order too, so no target always follows the same one.
        for name, url, headers, body in plan[i % 3 :] + plan[: i % 3]:
            begun = time.perf_counter()
            await send(url, headers, body)
            samples[name].append((time.perf_counter() - begun) * 1000)
    return samples


async def main(n: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="kiban-bench-"))
    database_url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    key = await prepare(database_url)
    plans = (ROOT / "src/kiban/billing/plans.toml").read_text()
    plans = re.sub(r"^models = \[.*\]$", 'models = ["*"]', plans, count=1, flags=re.M)
    for field, value in (
        ("monthly_tokens", "1_000_000_000_000"),
        ("monthly_cost_usd", "1_000_000.0"),
        ("requests_per_minute", "10_000_000"),
        ("tokens_per_minute", "1_000_000_000_000"),
    ):
        plans = re.sub(rf"^{field} = .*$", f"{field} = {value}", plans, flags=re.M)
    (workdir / "plans.toml").write_text(plans)

    openai_port, anthropic_port, kiban_port = free_port(), free_port(), free_port()
    openai_url = f"http://127.0.0.1:{openai_port}"
    anthropic_url = f"http://127.0.0.1:{anthropic_port}"
    kiban_url = f"http://127.0.0.1:{kiban_port}"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("KIBAN_", "OPENAI_", "ANTHROPIC_"))
    }
    env.update(
        KIBAN_ENV="development",
        KIBAN_DATABASE_URL=database_url,
        KIBAN_SECRET_KEY="bench-secret-key-that-is-long-enough-0123456789",
        KIBAN_PLANS_FILE=str(workdir / "plans.toml"),
        KIBAN_OPENAI_BASE_URL=f"{openai_url}/v1",
        KIBAN_OPENAI_API_KEY="sk-bench",
        KIBAN_ANTHROPIC_BASE_URL=anthropic_url,
        KIBAN_ANTHROPIC_API_KEY="sk-bench",
        KIBAN_LOG_JSON="true",
        PYTHONPATH=str(ROOT),
    )
    python = sys.executable
    processes = [
        start([python, "-m", "tests.fake_upstream", "--port", str(openai_port)], env),
        start([python, "-m", "tests.fake_anthropic", "--port", str(anthropic_port)], env),
    ]
    kiban = start(kiban_command(kiban_port), env)
    sent = 0
    try:
        wait_for(f"{openai_url}/v1/models")
        wait_for(f"{kiban_url}/healthz")
        print(f"concurrency 1, {n} requests per target, interleaved (medians, ms)")
        print(
            f"  {'':26} {'direct':>8} {'chat':>8} {'messages':>8}  {'added chat':>10} "
            f"{'added msgs':>10} {'msgs-chat':>9}"
        )
        async with httpx.AsyncClient(timeout=30) as client:
            for kind, upstream in (("openai", openai_url), ("anthropic", anthropic_url)):
                for stream in (False, True):
                    plan = targets(kind, upstream, kiban_url, key, stream=stream)
                    samples = await interleaved(client, plan, n, stream=stream)
                    sent += 2 * (n + WARMUP)
                    direct, chat, messages = (
                        statistics.median(samples[name]) for name in ("direct", "chat", "messages")
                    )
                    label = f"{kind} upstream, {'stream' if stream else 'JSON'}"
                    print(
                        f"  {label:26} {direct:8.3f} {chat:8.3f} {messages:8.3f}  "
                        f"{chat - direct:10.3f} {messages - direct:10.3f} {messages - chat:9.3f}"
                    )
        print("  goal: msgs-chat within 0.5 ms")
    finally:
        kiban.terminate()  # SIGTERM: kiban flushes its ledger on shutdown
        kiban.wait(30)
        for process in processes:
            process.terminate()
            process.wait(10)
    recorded = await count_records(database_url)
    verdict = "ok" if recorded == sent else "MISMATCH"
    print(f"ledger: {recorded} records for {sent} kiban requests ({verdict})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.requests))
