"""The models file: which model names kiban serves, through which deployments, with which limits."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kiban.gateway.deployments import Deployment, implicit_deployments, load_deployments
from kiban.gateway.exceptions import ModelNotFound
from kiban.settings import ConfigurationError, Settings

SHIPPED_MODELS_FILE = Path(__file__).with_name("models.toml")
PROVIDERS = ("openai", "anthropic", "extractive")
ENCODINGS = ("o200k_base", "cl100k_base")
EXTRACTIVE = "extractive"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    provider: str
    upstream_model: str
    context_window: int
    max_output_tokens: int
    encoding: str = "o200k_base"
    fallbacks: tuple[str, ...] = ()
    deployments: tuple[str, ...] = ()  # where it is served, by name (empty: the extractive engine)
    description: str = ""
    owned_by: str = "kiban"


class Catalog:
    """The models this process serves, and the one used when a request names none."""

    def __init__(
        self,
        models: dict[str, ModelSpec],
        default: str,
        deployments: dict[str, Deployment] | None = None,
    ) -> None:
        self.models = models
        self.default = default
        self.deployments = deployments or {}
        self.names = sorted(models)

    def resolve(self, name: str | None) -> ModelSpec:
        """The model for a request's ``model`` field (the default when absent)."""
        spec = self.models.get(name or self.default)
        if spec is None:
            raise ModelNotFound(str(name), self.names)
        return spec


def upstream_configured(settings: Settings) -> bool:
    """Whether an OpenAI-compatible upstream is configured (a key, a base URL, or both)."""
    return settings.openai_api_key is not None or bool(settings.openai_base_url)


def anthropic_configured(settings: Settings) -> bool:
    """Whether an Anthropic upstream is configured (a key, a base URL, or both)."""
    return settings.anthropic_api_key is not None or bool(settings.anthropic_base_url)


def load_catalog(settings: Settings) -> Catalog:
    """Read the models file; raise ``ConfigurationError`` naming the problem."""
    path = settings.models_file or SHIPPED_MODELS_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"Cannot read the models file {path}: {exc}") from exc
    # Declared deployments win over the environment's implicit one of the same name.
    deployments = {
        **implicit_deployments(settings),
        **load_deployments(path, data.get("deployments"), settings),
    }
    models: dict[str, ModelSpec] = {}
    for name, entry in (data.get("models") or {}).items():
        spec = _spec(path, name, entry)
        if spec.provider != EXTRACTIVE:
            if not spec.deployments:
                # The deployment named after its provider ("openai": OPENAI_BASE_URL's).
                if spec.provider not in deployments:
                    continue  # an "openai" model, and no upstream to send it to
                spec = replace(spec, deployments=(spec.provider,))
            unknown = [d for d in spec.deployments if d not in deployments]
            if unknown:
                raise ConfigurationError(
                    f"{path}: [models.{name}] deployments: {unknown[0]!r} is not a deployment "
                    f"(declared: {sorted(deployments)}; the implicit 'openai' one needs "
                    "OPENAI_API_KEY or OPENAI_BASE_URL)"
                )
        models[name] = spec
    if EXTRACTIVE not in models:
        models[EXTRACTIVE] = ModelSpec(
            name=EXTRACTIVE,
            provider="extractive",
            upstream_model=EXTRACTIVE,
            context_window=1_000_000,
            max_output_tokens=4096,
            description="Built-in extractive engine.",
        )
    for spec in models.values():
        unknown = [f for f in spec.fallbacks if f not in models]
        if unknown:
            raise ConfigurationError(f"{path}: model {spec.name!r} falls back to unknown {unknown}")
    with_upstream = upstream_configured(settings) or "gpt-4o-mini" in models
    default = settings.default_model or ("gpt-4o-mini" if with_upstream else EXTRACTIVE)
    if default not in models:
        raise ConfigurationError(
            f"KIBAN_DEFAULT_MODEL={default!r} is not served; the models are {sorted(models)} "
            f"(from {path}; 'openai' models need OPENAI_API_KEY or OPENAI_BASE_URL, 'anthropic' "
            "models ANTHROPIC_API_KEY or ANTHROPIC_BASE_URL)."
        )
    return Catalog(models, default, deployments)


def _spec(path: Path, name: str, entry: Any) -> ModelSpec:
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{path}: [models.{name}] must be a table")
    routes = entry.get("deployments", ())
    if not isinstance(routes, list | tuple) or not all(isinstance(d, str) for d in routes):
        raise ConfigurationError(
            f"{path}: [models.{name}] deployments: a list of deployment names is required"
        )
    # A model routed to deployments is an upstream one; "openai" is the historical name.
    provider = entry.get("provider", "openai" if routes else None)
    if provider not in PROVIDERS:
        raise ConfigurationError(f"{path}: model {name!r}: provider must be one of {PROVIDERS}")
    if provider == EXTRACTIVE and routes:
        raise ConfigurationError(
            f"{path}: [models.{name}] deployments: the extractive engine has no deployments"
        )
    encoding = entry.get("encoding", "o200k_base")
    if encoding not in ENCODINGS:
        raise ConfigurationError(f"{path}: model {name!r}: encoding must be one of {ENCODINGS}")
    try:
        return ModelSpec(
            name=name,
            provider=provider,
            upstream_model=str(entry.get("upstream_model", name)),
            context_window=int(entry.get("context_window", 128_000)),
            max_output_tokens=int(entry.get("max_output_tokens", 4096)),
            encoding=encoding,
            fallbacks=tuple(str(f) for f in entry.get("fallbacks", ())),
            deployments=tuple(dict.fromkeys(routes)),
            description=str(entry.get("description", "")),
            owned_by="kiban" if provider == "extractive" else provider,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{path}: model {name!r}: {exc}") from exc
