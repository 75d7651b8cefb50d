"""Log lines are rendered and written by a listener thread, never by the caller."""

from __future__ import annotations

import io
import threading
import time

import orjson
import pytest
import structlog

from kiban.core.logging import configure_logging, stop_listener


class BlockingStream(io.StringIO):
    """A stderr that blocks every write until released (a full pipe to a log shipper)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.writers: set[str] = set()

    def write(self, text: str) -> int:
        self.writers.add(threading.current_thread().name)
        self.release.wait(10)
        return super().write(text)


def test_a_blocked_stderr_does_not_block_the_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = BlockingStream()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging(json=True, level="INFO")
    try:
        started = time.perf_counter()
        for n in range(3):
            structlog.get_logger("kiban.test").info("line", n=n)
        assert time.perf_counter() - started < 1.0  # the writes are still blocked
        assert stream.getvalue() == ""
        stream.release.set()
    finally:
        stop_listener()  # writes out what is queued
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["event"], line["n"]) for line in lines] == [("line", 0), ("line", 1), ("line", 2)]
    assert threading.current_thread().name not in stream.writers
