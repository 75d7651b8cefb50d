"""Run every benchmark script in bench/ (``make bench``), one after the other, and stop on failure.

Each entry is a script and its arguments; add yours with a small edit. Scripts that are not
present are skipped, so this keeps working while the suite grows.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHMARKS: list[tuple[str, list[str]]] = [
    ("saturation.py", []),
    ("gateway_overhead.py", ["--requests", "2000", "--concurrency", "32", "--seconds", "5"]),
    ("messages_overhead.py", ["--requests", "1000"]),
    ("auth_overhead.py", []),
    ("retrieval_eval.py", []),
    ("analytics_summary.py", []),
    ("billing_webhooks.py", []),
    ("quota_overhead.py", ["--n", "2000"]),
    ("failover.py", []),
]


def main() -> int:
    failed = []
    for script, args in BENCHMARKS:
        path = HERE / script
        if not path.exists():
            continue
        print(f"\n=== {script} {' '.join(args)}", flush=True)
        started = time.monotonic()
        result = subprocess.run([sys.executable, str(path), *args], check=False)
        print(
            f"=== {script}: exit {result.returncode} in {time.monotonic() - started:.1f} s",
            flush=True,
        )
        if result.returncode != 0:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
