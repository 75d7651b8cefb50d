"""Hot-path identifiers: the layout of their kind, and no repeats."""

from __future__ import annotations

import re
import subprocess
import sys

from kiban.core import ids


def test_ids_have_the_layout_of_their_kind_and_do_not_repeat() -> None:
    made = {ids.unique_uuid() for _ in range(100_000)}
    assert len(made) == 100_000
    assert {u.version for u in made} == {4}
    requests = {ids.request_id() for _ in range(100_000)}
    assert len(requests) == 100_000
    assert all(re.fullmatch(r"[0-9a-f]{32}", r) for r in requests)


def test_each_process_draws_its_own() -> None:
    code = "from kiban.core import ids; print(ids.request_id())"
    drawn = {subprocess.check_output([sys.executable, "-c", code], text=True) for _ in range(3)}
    assert len(drawn) == 3
