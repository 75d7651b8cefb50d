"""Settings refuse what cannot work in production, and say how to fix it."""

from pathlib import Path

import pytest

from kiban.app import create_app
from kiban.settings import ConfigurationError, Settings


def make(tmp_path: Path, **values: object) -> Settings:
    return Settings(_env_file=None, dev_secret_file=tmp_path / ".kiban-secret", **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        (None, "is not set"),
        ("changethis", "well-known default"),
        ("short-secret", "too short"),
    ],
)
def test_production_refuses_weak_signing_key(
    tmp_path: Path, secret: str | None, reason: str
) -> None:
    settings = make(tmp_path, env="production", secret_key=secret)
    with pytest.raises(ConfigurationError, match=reason) as info:
        create_app(settings)
    assert "secrets.token_urlsafe" in str(info.value)


def test_production_accepts_strong_key(tmp_path: Path) -> None:
    settings = make(tmp_path, env="production", secret_key="x" * 16 + "y" * 16 + "z")
    assert create_app(settings).state.keyring.fingerprint


def test_development_generates_a_key_file_once(tmp_path: Path) -> None:
    first, note = make(tmp_path).signing_secret()
    assert note is not None
    assert ".kiban-secret" in note
    second, note_again = make(tmp_path).signing_secret()
    assert first == second
    assert note_again is None
    assert (tmp_path / ".kiban-secret").stat().st_mode & 0o077 == 0


def test_development_replaces_an_empty_key_file(tmp_path: Path) -> None:
    (tmp_path / ".kiban-secret").write_text("\n")
    secret, note = make(tmp_path).signing_secret()
    assert len(secret) >= 32
    assert note is not None
    assert (tmp_path / ".kiban-secret").read_text().strip() == secret


def test_cors_origins_accept_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIBAN_CORS_ORIGINS", "https://a.example, https://b.example")
    assert Settings(_env_file=None).cors_origins == ["https://a.example", "https://b.example"]  # type: ignore[call-arg]


@pytest.mark.parametrize("seconds", [0, 0.51, 1.0])
def test_api_key_cache_poll_must_leave_room_within_its_one_second_bound(
    tmp_path: Path, seconds: float
) -> None:
    with pytest.raises(ValueError, match="api_key_cache_poll_seconds"):
        make(tmp_path, api_key_cache_poll_seconds=seconds)


def test_gitignore_keeps_the_development_key_out_of_git() -> None:
    ignored = (Path(__file__).parents[1] / ".gitignore").read_text().split()
    assert ".kiban-secret" in ignored
