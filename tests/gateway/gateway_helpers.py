"""Helpers for the gateway tests (imported by the test modules)."""

from __future__ import annotations

from typing import Any

from tests.fake_anthropic import FakeAnthropic
from tests.fake_upstream import DEFAULT_REPLY, FakeUpstream, Fault

__all__ = [
    "DEFAULT_REPLY",
    "FakeAnthropic",
    "FakeUpstream",
    "Fault",
    "sse_events",
    "with_anthropic",
]


def with_anthropic(gateway_settings: dict[str, Any], fake: FakeAnthropic) -> dict[str, Any]:
    """Gateway settings with the fake Anthropic server as the ``anthropic`` upstream too (a test
    module overrides its ``gateway_settings`` fixture with these)."""
    return {**gateway_settings, "anthropic_base_url": fake.base_url, "anthropic_api_key": fake.key}


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
