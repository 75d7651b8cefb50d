"""Exact costs from a shipped price table (USD per million tokens), overridable by the operator."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import structlog

from kiban.settings import ConfigurationError

log = structlog.get_logger("kiban.gateway.pricing")

SHIPPED_PRICES_FILE = Path(__file__).with_name("prices.toml")
MILLION = Decimal(1_000_000)
# The ledger column keeps 10 decimal places; a single cached token of the cheapest model fits.
COST_QUANTUM = Decimal("0.0000000001")


@dataclass(frozen=True)
class Price:
    input: Decimal
    output: Decimal
    cached_input: Decimal  # a prompt token read from a cache (OpenAI cached input, Anthropic read)
    cache_write: Decimal | None = None  # a prompt token written to a cache (None: the input price)

    def cost(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> Decimal:
        """Exact USD cost; the prompt's cached parts (read from, written to a cache) are billed
        at their own rates, the rest at the input rate."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        written = min(max(cache_write_tokens, 0), prompt_tokens - cached)
        write_price = self.input if self.cache_write is None else self.cache_write
        total = (
            (prompt_tokens - cached - written) * self.input
            + cached * self.cached_input
            + written * write_price
            + completion_tokens * self.output
        ) / MILLION
        return total.quantize(COST_QUANTUM, rounding=ROUND_HALF_UP)


class PriceTable:
    """Prices by model name; an unknown model has no price (``None``), never a silent 0."""

    def __init__(self, prices: dict[str, Price], checked: date | None = None) -> None:
        self.prices = prices
        self.checked = checked
        self._warned: set[str] = set()

    def price(self, *names: str) -> Price | None:
        """The price of the first of ``names`` that has one (kiban name, then upstream id)."""
        for name in names:
            found = self.prices.get(name)
            if found is not None:
                return found
        return None

    def cost(
        self,
        names: tuple[str, ...],
        prompt_tokens: int,
        completion_tokens: int,
        cached: int = 0,
        cache_write: int = 0,
    ) -> Decimal | None:
        """The request's cost, or ``None`` (and a warning, once per model) when unpriced."""
        price = self.price(*names)
        if price is None:
            if names[0] not in self._warned:
                self._warned.add(names[0])
                log.warning(
                    "model_has_no_price",
                    model=names[0],
                    hint="add it to KIBAN_PRICES_FILE; its cost is recorded as NULL",
                )
            return None
        return price.cost(prompt_tokens, completion_tokens, cached, cache_write)


def load_prices(override: Path | None = None) -> PriceTable:
    """The shipped table, with the operator's file (if any) merged over it."""
    shipped = _read(SHIPPED_PRICES_FILE)
    prices = _parse(SHIPPED_PRICES_FILE, shipped)
    checked = shipped.get("checked")
    if override is not None:
        data = _read(override)
        prices.update(_parse(override, data))
        checked = data.get("checked", checked)
    return PriceTable(prices, checked if isinstance(checked, date) else None)


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"Cannot read the prices file {path}: {exc}") from exc


def _parse(path: Path, data: dict[str, Any]) -> dict[str, Price]:
    prices: dict[str, Price] = {}
    for name, entry in (data.get("prices") or {}).items():
        try:
            input_price = _decimal(entry["input"])
            # ``cache_read`` is Anthropic's name for what OpenAI calls cached input.
            if "cached_input" in entry and "cache_read" in entry:
                raise ValueError("give cached_input or cache_read, not both")
            read = entry.get("cached_input", entry.get("cache_read", entry["input"]))
            write = entry.get("cache_write")
            prices[name] = Price(
                input=input_price,
                output=_decimal(entry["output"]),
                cached_input=_decimal(read),
                cache_write=None if write is None else _decimal(write),
            )
        except (KeyError, TypeError, InvalidOperation, ValueError) as exc:
            raise ConfigurationError(
                f"{path}: [prices.{name}] needs input and output prices as decimal strings "
                f'(USD per million tokens), e.g. input = "0.15": {exc!r}'
            ) from exc
    return prices


def _decimal(value: Any) -> Decimal:
    if isinstance(value, float):
        # A float has already lost the exact price; make the operator write a string.
        raise ValueError(f"{value!r} is a float; write it as a string")
    result = Decimal(str(value))
    if not result.is_finite() or result < 0:
        raise ValueError(f"{value!r} is not a price")
    return result
