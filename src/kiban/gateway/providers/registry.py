"""Which provider speaks each deployment kind: one line per kind.

A factory builds the provider of one deployment; it makes one attempt per call (the router owns
retries and failover). A kind the models file may name but this registry lacks is refused at
start-up (``check_kinds``), never at the first request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kiban.gateway.deployments import Deployment
from kiban.gateway.providers.anthropic import AnthropicProvider
from kiban.gateway.providers.base import Provider
from kiban.gateway.providers.http import UpstreamPools
from kiban.gateway.providers.openai import OpenAIProvider
from kiban.settings import ConfigurationError, Settings

ProviderFactory = Callable[[Settings, Deployment, UpstreamPools], Provider]

FACTORIES: dict[str, ProviderFactory] = {
    "openai": OpenAIProvider,
    "anthropic": lambda settings, deployment, pools: AnthropicProvider(
        settings,
        base_url=deployment.base_url,
        api_key=deployment.api_key,
        pools=pools,
        deployment=deployment,
    ),
}


def check_kinds(deployments: Iterable[Deployment], source: str) -> None:
    """Refuse a deployment whose kind no provider here speaks (``ConfigurationError``)."""
    for deployment in deployments:
        if deployment.kind not in FACTORIES:
            raise ConfigurationError(
                f"{source}: [deployments.{deployment.name}] kind = {deployment.kind!r}: this "
                f"version of kiban cannot call it yet (supported: {sorted(FACTORIES)})"
            )


def build_provider(settings: Settings, deployment: Deployment, pools: UpstreamPools) -> Provider:
    """The provider of one deployment (its kind checked by ``check_kinds`` before)."""
    return FACTORIES[deployment.kind](settings, deployment, pools)
