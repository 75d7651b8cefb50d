"""One `Settings` class, read from the environment (prefix ``KIBAN_``) and ``.env``.

Each domain keeps its settings in a labelled block below. Secrets are ``SecretStr`` so they never
appear in reprs or logs.
"""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Values seen in tutorials and templates; a production key must not be one of them.
KNOWN_DEFAULT_SECRETS = frozenset(
    {
        "changethis",
        "change-me",
        "changeme",
        "secret",
        "secret-key",
        "your-secret-key",
        "supersecret",
        "dev",
        "development",
        "kiban",
        "test",
        "09d25e094faa6ca2556c818166b7a9563b93f7099f6f0f4caa6cf63b88e8d3e7",
    }
)
MIN_SECRET_LENGTH = 32


class ConfigurationError(RuntimeError):
    """The configuration cannot work; the message says what to change."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KIBAN_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- core ---------------------------------------------------------------------------------
    env: Literal["development", "production", "test"] = "development"
    database_url: str = "sqlite+aiosqlite:///./kiban.db"
    database_pool_size: int = 10
    redis_url: str | None = None
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: str = "INFO"
    log_json: bool | None = None  # default: JSON in production, pretty elsewhere
    base_url: str = "http://127.0.0.1:8000"

    # --- auth ---------------------------------------------------------------------------------
    secret_key: SecretStr | None = None
    jwt_keys_file: Path | None = None
    dev_secret_file: Path = Path(".kiban-secret")
    jwt_issuer: str = "kiban"
    jwt_audience: str = "kiban"
    jwt_leeway_seconds: int = 30
    access_token_ttl_seconds: int = 15 * 60
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    login_max_failures: int = 5
    login_failure_window_seconds: int = 15 * 60
    login_max_failures_per_address: int = 30

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def json_logs(self) -> bool:
        return self.log_json if self.log_json is not None else self.env == "production"

    def signing_secret(self) -> tuple[str, str | None]:
        """The HS256 secret to sign with, and a note when it was generated for development.

        Production refuses a missing, known-default or short key; development generates one into a
        git-ignored local file so that restarts (and several local processes) agree.
        """
        if self.secret_key is not None:
            value = self.secret_key.get_secret_value()
            problem = secret_problem(value)
            if problem and self.env == "production":
                raise ConfigurationError(f"KIBAN_SECRET_KEY {problem}. {_KEY_ADVICE}")
            return value, None
        if self.env == "production":
            if self.jwt_keys_file is not None:
                return "", None
            raise ConfigurationError(f"KIBAN_SECRET_KEY is not set. {_KEY_ADVICE}")
        path = self.dev_secret_file
        if path.exists():
            return path.read_text().strip(), None
        value = secrets.token_urlsafe(48)
        path.write_text(value + "\n")
        path.chmod(0o600)
        return value, f"generated a development signing key in {path} (git-ignored)"


_KEY_ADVICE = (
    "Set it to a random value of at least 32 characters, for example: "
    "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
)


def secret_problem(value: str) -> str | None:
    """Why a signing secret is unfit for production, or None."""
    if value.strip().lower() in KNOWN_DEFAULT_SECRETS:
        return "is a well-known default value"
    if len(value) < MIN_SECRET_LENGTH:
        return f"is too short ({len(value)} characters; at least {MIN_SECRET_LENGTH} are needed)"
    return None


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (the CLI's; the app receives its own instance)."""
    return Settings()
