"""Deployments: the named upstreams a model is routed to, read from the models file.

A deployment is one place that can answer: its protocol (``kind``), its base URL, the environment
variable that holds its key, its timeouts, how many requests it may carry at once and its share of
the traffic. A model names the deployments that serve it (``deployments = ["a", "b"]``); the
router (``kiban.gateway.routing``) picks among them and fails over.

Without any ``[deployments]`` table the configuration is today's: ``OPENAI_BASE_URL`` and
``OPENAI_API_KEY`` are one implicit deployment named ``openai``, which every ``openai`` model
without a ``deployments`` list is routed to (a model without a list goes to the deployment named
after its ``provider``: ``implicit_deployments`` is where another provider's environment
variables would become its implicit deployment).

Every field is checked when the file is read, at start-up; an error names the table and field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiban.settings import ConfigurationError, Settings

# The protocols a deployment may speak; which of them this build can call is the provider
# registry's to say (``kiban.gateway.providers.registry``).
KINDS = ("openai", "anthropic")
DEFAULT_DEPLOYMENT = "openai"
OPENAI_BASE_URL = "https://api.openai.com/v1"
ANTHROPIC_BASE_URL = "https://api.anthropic.com"  # its provider adds /v1/messages
_FIELDS = frozenset(
    {
        "kind",
        "base_url",
        "api_key_env",
        "timeout_seconds",
        "connect_timeout_seconds",
        "max_concurrency",
        "weight",
        "model_ids",
    }
)


@dataclass(frozen=True)
class Deployment:
    name: str
    kind: str
    base_url: str
    api_key_env: str | None  # the variable the key was read from (None: no key, or the default's)
    api_key: str | None
    timeout_seconds: float  # between two reads of one attempt (a stream may run longer)
    connect_timeout_seconds: float
    max_concurrency: int | None  # requests in flight at once (None: no cap beyond the pool's)
    weight: float = 1.0
    # The id this deployment knows a model by, when it is not the model's upstream_model (an
    # Azure deployment name, a vLLM or Ollama model tag): upstream_model -> id.
    model_ids: Mapping[str, str] = field(default_factory=dict)

    def model_id(self, upstream_model: str) -> str:
        return self.model_ids.get(upstream_model, upstream_model)

    def __repr__(self) -> str:  # never the key
        return f"Deployment({self.name!r}, kind={self.kind!r}, base_url={self.base_url!r})"


def implicit_deployments(settings: Settings) -> dict[str, Deployment]:
    """The deployments the environment configures without a models file: ``OPENAI_*``'s
    (named ``openai``) and ``ANTHROPIC_*``'s (named ``anthropic``)."""
    found: dict[str, Deployment] = {}
    if settings.openai_api_key is not None or settings.openai_base_url:
        found[DEFAULT_DEPLOYMENT] = default_deployment(settings)
    if settings.anthropic_api_key is not None or settings.anthropic_base_url:
        key = settings.anthropic_api_key.get_secret_value() if settings.anthropic_api_key else None
        found["anthropic"] = Deployment(
            name="anthropic",
            kind="anthropic",
            base_url=(settings.anthropic_base_url or ANTHROPIC_BASE_URL).rstrip("/"),
            api_key_env=None,
            api_key=key or None,
            timeout_seconds=settings.upstream_timeout_seconds,
            connect_timeout_seconds=settings.upstream_connect_timeout_seconds,
            max_concurrency=None,
        )
    return found


def default_deployment(settings: Settings) -> Deployment:
    """The implicit deployment of ``OPENAI_BASE_URL``/``OPENAI_API_KEY`` (today's configuration)."""
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    return Deployment(
        name=DEFAULT_DEPLOYMENT,
        kind="openai",
        base_url=(settings.openai_base_url or OPENAI_BASE_URL).rstrip("/"),
        api_key_env=None,
        api_key=key or None,
        timeout_seconds=settings.upstream_timeout_seconds,
        connect_timeout_seconds=settings.upstream_connect_timeout_seconds,
        max_concurrency=None,
    )


def load_deployments(path: Path, tables: Any, settings: Settings) -> dict[str, Deployment]:
    """The ``[deployments."name"]`` tables of the models file, checked (``ConfigurationError``)."""
    if tables is None:
        return {}
    if not isinstance(tables, dict):
        raise ConfigurationError(f"{path}: [deployments] must be a table of tables")
    return {name: _deployment(path, name, entry, settings) for name, entry in tables.items()}


def _deployment(path: Path, name: str, entry: Any, settings: Settings) -> Deployment:
    where = f"{path}: [deployments.{name}]"
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where} must be a table")
    if not name or len(name) > 64:
        raise ConfigurationError(f"{where}: a deployment's name is 1 to 64 characters")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown field {unknown[0]!r} (known: {sorted(_FIELDS)})"
        )
    kind = entry.get("kind", "openai")
    if kind not in KINDS:
        raise ConfigurationError(f"{where} kind = {kind!r}: must be one of {list(KINDS)}")
    base_url = entry.get("base_url")
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ConfigurationError(
            f"{where} base_url = {base_url!r}: an http:// or https:// URL is required"
        )
    key_env = entry.get("api_key_env")
    key: str | None = None
    if key_env is not None:
        if not isinstance(key_env, str) or not key_env:
            raise ConfigurationError(f"{where} api_key_env: the name of an environment variable")
        key = os.environ.get(key_env) or None
        if key is None:
            raise ConfigurationError(
                f"{where} api_key_env = {key_env!r}: that environment variable is not set "
                "(leave api_key_env out for a server that needs no key)"
            )
    return Deployment(
        name=name,
        kind=kind,
        base_url=base_url.rstrip("/"),
        api_key_env=key_env,
        api_key=key,
        timeout_seconds=_positive(
            where, entry, "timeout_seconds", settings.upstream_timeout_seconds
        ),
        connect_timeout_seconds=_positive(
            where, entry, "connect_timeout_seconds", settings.upstream_connect_timeout_seconds
        ),
        max_concurrency=_cap(where, entry.get("max_concurrency")),
        weight=_positive(where, entry, "weight", 1.0),
        model_ids=_model_ids(where, entry.get("model_ids", {})),
    )


def _positive(where: str, entry: dict[str, Any], field: str, default: float) -> float:
    value = entry.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigurationError(f"{where} {field} = {value!r}: a number above 0 is required")
    return float(value)


def _model_ids(where: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()
    ):
        raise ConfigurationError(
            f'{where} model_ids: a table of upstream_model = "the id this deployment uses"'
        )
    return dict(value)


def _cap(where: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(
            f"{where} max_concurrency = {value!r}: a whole number of at least 1 is required"
        )
    return value
