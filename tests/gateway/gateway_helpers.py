"""Helpers for the gateway tests (imported by the test modules)."""

from __future__ import annotations

from tests.fake_upstream import DEFAULT_REPLY, FakeUpstream, Fault

__all__ = ["DEFAULT_REPLY", "FakeUpstream", "Fault", "sse_events"]


def sse_events(text: str) -> list[tuple[str, str]]:
    """(event, data) pairs of a server-sent events body; comments appear as ("comment", text)."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        event, data = "message", []
        for line in block.split("\n"):
            if line.startswith(":"):
                events.append(("comment", line[1:].strip()))
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            events.append((event, "\n".join(data)))
    return events
