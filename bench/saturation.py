"""The gateway against the Python floor, measured with a C load generator (wrk).

A Python client saturates before the servers do, so this bench drives them with ``wrk``
(installed with apt when missing). In one run, on loopback, one after another:

- **direct**: the fake upstream (``tests/fake_upstream.py``) alone;
- **floor**: ``floor_aiohttp.py`` from the shared bench notes (a raw ASGI pass-through with one
  pooled aiohttp client, no auth, no database), when ``--floor-dir`` holds it;
- **kiban**: ``/v1/chat/completions`` served by uvicorn (``--workers``), SQLite by default or
  ``--database-url``, an API key, the real quota admission and the usage ledger on;
- **litellm**: LiteLLM's proxy in front of the same upstream, without a database, when
  ``--litellm`` names its ``litellm`` command (install it in a venv of its own, e.g.
  ``uv venv /tmp/litellm && VIRTUAL_ENV=/tmp/litellm uv pip install 'litellm[proxy]'``).

Latency at concurrency 1 (``wrk -c1 --latency``, direct and kiban interleaved ``--rounds``
times): p50 and p99 and what kiban adds. Saturation (``-c --connections``): requests/s, and the
ratios to direct and to the floor. At the end, kiban's ledger must hold one record per request
it answered. The servers' peak resident memory (``VmHWM``, summed over a server's processes) is
printed beside their figures.

    .venv/bin/python bench/saturation.py [--seconds 6] [--connections 32] [--workers 1]
        [--database-url postgresql+asyncpg://postgres@127.0.0.1:5432/kiban_bench]
        [--redis-url redis://127.0.0.1:6379/0]

A PostgreSQL database given with ``--database-url`` must exist (it is migrated, and a user and
key are added to it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

from gateway_overhead import (
    BODY,
    count_records,
    free_port,
    generous_plans,
    prepare,
    start,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
FLOOR_DIR = ROOT.parent / "shared" / "bench" / "floor"
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
LITELLM_KEY = "sk-litellm-bench-master-key"


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk (apt)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)
    return shutil.which("wrk") or sys.exit("wrk could not be installed")


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * _UNITS[unit]


class Wrk:
    """Runs wrk with a POST body and an Authorization header, and reads its summary."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir

    def run(self, url: str, token: str, connections: int, seconds: float) -> dict[str, float]:
        script = self.workdir / f"post-{abs(hash(token))}.lua"
        body = json.dumps(BODY)
        script.write_text(
            "wrk.method = 'POST'\n"
            f"wrk.body = '{body}'\n"
            "wrk.headers['Content-Type'] = 'application/json'\n"
            f"wrk.headers['Authorization'] = 'Bearer {token}'\n"
        )
        # wrk takes whole seconds.
        args = [self.binary, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
        out = subprocess.run(
            [*args, "-s", str(script), url], capture_output=True, text=True, check=True
        ).stdout
        latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
        requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        timeouts = re.search(r"Socket errors: .*timeout (\d+)", out)
        return {
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            # No distribution when no request completed within wrk's 2 s timeout.
            "p50": _ms(latency["50"]) if "50" in latency else float("nan"),
            "p99": _ms(latency["99"]) if "99" in latency else float("nan"),
            "requests": requests,
            "bad": int(non_2xx.group(1)) if non_2xx else 0,
            "timeouts": int(timeouts.group(1)) if timeouts else 0,
        }


def _logged(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A server whose stderr is kept (kiban's errors, if any, are the bench's to show)."""
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a process and its children (uvicorn's workers), in MB."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(child) for child in children.read_text().split()]
    total = 0
    for each in pids:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total / 1024


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="kiban-wrk-"))
    wrk = Wrk(ensure_wrk(), workdir)
    database_url = args.database_url or f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    key = await prepare(database_url)
    before = await count_records(database_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIBAN_", "OPENAI_"))}
    up_port, floor_port, kiban_port = free_port(), free_port(), free_port()
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
        UPSTREAM=upstream_url,
    )
    if args.redis_url:
        env.update(KIBAN_REDIS_URL=args.redis_url, KIBAN_QUOTA_BACKEND="redis")
        # A settle stream of this run's own: it drains into this run's database only.
        env.update(KIBAN_QUOTA_SETTLE_STREAM=f"kiban:bench-settlements:{workdir.name}")
    py = sys.executable
    uvicorn = [
        py,
        "-m",
        "uvicorn",
        "--host",
        "127.0.0.1",
        "--no-access-log",
        "--log-level",
        "warning",
    ]

    def port(number: int) -> list[str]:
        return ["--port", str(number)]

    processes = [start([py, str(ROOT / "tests/fake_upstream.py"), "--port", str(up_port)], env)]
    floor = (args.floor_dir / "floor_aiohttp.py").exists()
    if floor:
        processes.append(
            start(
                [
                    *uvicorn,
                    "--app-dir",
                    str(args.floor_dir),
                    "floor_aiohttp:app",
                    *port(floor_port),
                ],
                env,
            )
        )
    litellm_port = free_port()
    if args.litellm:
        config = workdir / "litellm.yaml"
        config.write_text(
            "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n"
            f"      model: openai/gpt-4o-mini\n      api_base: {upstream_url}\n"
            "      api_key: sk-bench\n"
        )
        # Its proxy refuses to start without a master key (1.108): the clients present it, an
        # in-memory comparison, as kiban's cached key is.
        litellm_env = {**env, "LITELLM_LOG": "ERROR", "LITELLM_MASTER_KEY": LITELLM_KEY}
        command = [args.litellm, "--config", str(config), "--host", "127.0.0.1"]
        processes.append(
            _logged([*command, *port(litellm_port)], litellm_env, workdir / "litellm.log")
        )
    kiban_log = workdir / "kiban.log"
    kiban = [*uvicorn, "--factory", "kiban.app:create_app", *port(kiban_port)]
    processes.append(_logged([*kiban, "--workers", str(args.workers)], env, kiban_log))
    targets = {
        "direct": (f"{upstream_url}/chat/completions", "sk-bench"),
        "floor": (f"http://127.0.0.1:{floor_port}/chat/completions", "sk-floor"),
        "kiban": (f"http://127.0.0.1:{kiban_port}/v1/chat/completions", key),
    }
    if not floor:
        del targets["floor"]
    if args.litellm:
        targets["litellm"] = (f"http://127.0.0.1:{litellm_port}/v1/chat/completions", LITELLM_KEY)
    servers = {"kiban": processes[-1]} | ({"litellm": processes[-2]} if args.litellm else {})
    kiban_runs: list[dict[str, float]] = []
    try:
        wait_for(f"{upstream_url}/models")
        wait_for(f"http://127.0.0.1:{kiban_port}/healthz")
        if floor:
            wait_for(f"http://127.0.0.1:{floor_port}/", timeout=30)
        if args.litellm:
            wait_for(f"http://127.0.0.1:{litellm_port}/health/liveliness", timeout=120)
        for name, (url, token) in targets.items():  # warm up
            run = wrk.run(url, token, 4, 1)
            if name == "kiban":
                kiban_runs.append(run)

        one: dict[str, list[dict[str, float]]] = {"direct": [], "kiban": []}
        for _ in range(args.rounds):
            for name in one:
                one[name].append(wrk.run(*targets[name], 1, max(1, round(args.seconds / 2))))
        kiban_runs += one["kiban"]
        print(f"concurrency 1 (wrk -c1, {args.rounds} interleaved rounds; medians, ms)")
        print(f"  {'':8} {'p50':>8} {'p99':>8}")
        for name, runs in one.items():
            p50 = statistics.median(r["p50"] for r in runs)
            p99 = statistics.median(r["p99"] for r in runs)
            print(f"  {name:8} {p50:8.3f} {p99:8.3f}")
        for q in ("p50", "p99"):
            added = statistics.median(r[q] for r in one["kiban"]) - statistics.median(
                r[q] for r in one["direct"]
            )
            goal = "1.5" if q == "p50" else "5"
            print(f"  added {q}: {added:.3f} ms (goal <= {goal} ms)")

        print(f"saturation (wrk -t1 -c{args.connections}, {args.seconds:g} s each)")
        print(f"  {'':8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'timeouts':>8}")
        sat = {}
        for name, (url, token) in targets.items():
            spy = None
            if name == "kiban" and args.py_spy:  # py-spy's raw (collapsed) stacks of the run
                spy = await asyncio.create_subprocess_exec(
                    *(args.py_spy, "record", "-p", str(servers["kiban"].pid), "--subprocesses"),
                    *("-r", "200", "--format", "raw", "--threads"),
                    *("-o", str(workdir / "profile.txt"), "-d", str(int(args.seconds) + 2)),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                await asyncio.sleep(1)
            sat[name] = wrk.run(url, token, args.connections, args.seconds)
            if spy is not None:
                await asyncio.wait_for(spy.wait(), 30)
                print(f"  profile of kiban: {workdir / 'profile.txt'}")
            r = sat[name]
            print(
                f"  {name:8} {r['rps']:9.0f} {r['p50']:8.2f} {r['p99']:8.2f} {r['bad']:8.0f}"
                f" {r['timeouts']:8.0f}"
            )
        k = sat["kiban"]["rps"]
        print(f"  kiban / direct: {k / sat['direct']['rps']:.1%}")
        if floor:
            print(f"  kiban / floor:  {k / sat['floor']['rps']:.1%} (goal >= 20%)")
        if args.litellm:
            print(f"  kiban / litellm: {k / sat['litellm']['rps']:.1f}x (goal >= 15x)")
        kiban_runs.append(sat["kiban"])
        for name, process in servers.items():
            print(f"  {name} peak resident memory: {peak_rss_mb(process.pid):.0f} MB")
    finally:
        for process in reversed(processes):
            process.terminate()  # SIGTERM: kiban flushes its ledger on shutdown
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                print(f"pid {process.pid} ignored SIGTERM for 60 s; killed", file=sys.stderr)
                process.kill()
    recorded = await count_records(database_url) - before
    answered = sum(int(r["requests"]) for r in kiban_runs)
    bad = sum(int(r["bad"]) for r in kiban_runs)
    # wrk counts the responses it read; requests in flight when a run ends are answered to no
    # one but still recorded (cancelled), so the ledger may hold a few more, never fewer.
    verdict = "ok" if recorded >= answered and bad == 0 else "MISMATCH"
    shown = make_url(database_url).render_as_string(hide_password=True)
    quotas = f", quotas in Redis {args.redis_url}" if args.redis_url else ""
    print(f"kiban: {args.workers} worker(s) on {shown}{quotas}; its log: {kiban_log}")
    print(f"ledger: {recorded} records for {answered} answered, {bad} non-2xx ({verdict})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--redis-url", default=None, help="quotas in Redis (KIBAN_QUOTA_BACKEND)")
    parser.add_argument("--floor-dir", type=Path, default=FLOOR_DIR)
    parser.add_argument("--litellm", default=None, help="LiteLLM's `litellm` command, to compare")
    parser.add_argument("--py-spy", default=None, help="py-spy's path: profile kiban's saturation")
    asyncio.run(main(parser.parse_args()))
