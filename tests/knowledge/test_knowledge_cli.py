"""`kiban knowledge seed` and `kiban knowledge search` against a real database."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kiban.cli import app


def test_seed_then_search_from_the_shell(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KIBAN_DATABASE_URL", database_url)
    runner = CliRunner()
    first = runner.invoke(app, ["knowledge", "seed"])
    assert first.exit_code == 0, first.output
    assert "api-errors-ja.md" in first.output
    assert "added" in first.output
    again = runner.invoke(app, ["knowledge", "seed"])
    assert again.output.count("already there") == first.output.count("added")
    found = runner.invoke(app, ["knowledge", "search", "トークンの有効期限が切れたら？"])
    assert found.exit_code == 0, found.output
    assert "relevant api-errors-ja.md" in found.output
    missing = runner.invoke(app, ["knowledge", "search", "How do I bake sourdough bread?"])
    assert "No relevant information found." in missing.output
