"""The plan catalog: what each plan may use, read from a TOML file and validated at start-up.

The shipped ``plans.toml`` (next to this module) defines ``free`` and ``pro``; ``KIBAN_PLANS_FILE``
replaces it. ``KIBAN_STRIPE_PRICES`` (``"pro=price_a,price_b;team=price_c"``) then replaces the
``stripe_price_ids`` of the plans it lists, so prices need no copy of the file. ``load_catalog``
is the one place the two meet; the app, the CLI and ``kiban doctor`` all get their catalog from it.
A file or a variable that does not validate stops the app from starting with a message naming
the file or variable and the problem (``ConfigurationError``). The catalog is immutable and held
in memory: the hot path never reads it from disk or the database.
"""

from __future__ import annotations

import re
import tomllib
from decimal import Decimal
from fnmatch import fnmatchcase
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kiban.settings import ConfigurationError

if TYPE_CHECKING:
    from kiban.settings import Settings

DEFAULT_PLANS_FILE = Path(__file__).with_name("plans.toml")

PlanName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DocumentLimits(_Strict):
    """How much a user may upload to the knowledge base."""

    max_documents: int = Field(ge=0)
    max_document_bytes: int = Field(ge=0)
    max_total_bytes: int = Field(ge=0)


class Plan(_Strict):
    """One plan: allowances, limits and the models it may use."""

    name: PlanName
    display_name: str = ""
    monthly_tokens: int = Field(ge=0)
    monthly_cost_usd: Decimal | None = Field(default=None, ge=0)
    requests_per_minute: int = Field(ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    models: tuple[str, ...] = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    max_prompt_tokens: int = Field(ge=1)
    documents: DocumentLimits
    stripe_price_ids: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _tokens_per_minute_fits_one_request(self) -> Plan:
        tpm = self.tokens_per_minute
        if tpm is not None and tpm < self.max_prompt_tokens + self.max_tokens:
            raise ValueError(
                f"plans.{self.name}.tokens_per_minute: {tpm} is below max_prompt_tokens + "
                f"max_tokens ({self.max_prompt_tokens + self.max_tokens}), so the largest "
                "request the plan allows could never run"
            )
        return self

    def allows_model(self, model: str) -> bool:
        """Whether the plan may use ``model`` (names, shell-style patterns or ``*``)."""
        return any(pattern == model or fnmatchcase(model, pattern) for pattern in self.models)

    @property
    def label(self) -> str:
        return self.display_name or self.name


class PlanCatalog(_Strict):
    """Every plan, by name, and the one users get by default."""

    default_plan: PlanName
    plans: dict[PlanName, Plan]

    @model_validator(mode="before")
    @classmethod
    def _names_from_keys(cls, data: Any) -> Any:
        # ``[plans.pro]`` names the plan ``pro``; the table need not repeat it.
        if isinstance(data, dict) and isinstance(data.get("plans"), dict):
            plans = {}
            for key, value in data["plans"].items():
                if isinstance(value, dict):
                    value = {"name": key, **value}
                plans[key] = value
            data = {**data, "plans": plans}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> PlanCatalog:
        if not self.plans:
            raise ValueError("plans: at least one plan is required")
        for key, plan in self.plans.items():
            if plan.name != key:
                raise ValueError(f"plans.{key}.name: must be {key!r} (the table's key)")
        if self.default_plan not in self.plans:
            raise ValueError(
                f"default_plan: {self.default_plan!r} is not one of the plans "
                f"({', '.join(sorted(self.plans))})"
            )
        owners: dict[str, str] = {}
        for plan in self.plans.values():
            for price in plan.stripe_price_ids:
                if price in owners:
                    raise ValueError(
                        f"plans.{plan.name}.stripe_price_ids: {price!r} already buys plan "
                        f"{owners[price]!r}"
                    )
                owners[price] = plan.name
        return self

    @property
    def default(self) -> Plan:
        return self.plans[self.default_plan]

    def get(self, name: str | None) -> Plan:
        """The named plan; the default plan for ``None`` or a name no longer in the file."""
        if name is None:
            return self.default
        return self.plans.get(name, self.default)

    def for_price(self, price_id: str) -> Plan | None:
        """The plan a Stripe price id buys, if any."""
        for plan in self.plans.values():
            if price_id in plan.stripe_price_ids:
                return plan
        return None


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse_plans(text: str, *, source: str = "<plans>") -> PlanCatalog:
    """Parse and validate a plans file's text; ``ConfigurationError`` names the bad field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigurationError(f"plans file {source} is not valid TOML: {e}") from e
    try:
        return PlanCatalog.model_validate(data)
    except ValidationError as e:
        problems = []
        for error in e.errors(include_url=False):
            message = error["msg"].removeprefix("Value error, ")
            if error["loc"]:
                problems.append(f"{_field_path(error['loc'])}: {message}")
            else:
                problems.append(message)
        raise ConfigurationError(
            f"plans file {source} is invalid: " + "; ".join(problems[:8])
        ) from e


def load_plans(path: Path | None = None) -> PlanCatalog:
    """Load the plans file (``KIBAN_PLANS_FILE``, else the shipped defaults)."""
    path = path or DEFAULT_PLANS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigurationError(
            f"plans file {path} cannot be read ({e.strerror}); set KIBAN_PLANS_FILE to an "
            "existing TOML file or unset it to use the shipped plans"
        ) from e
    return parse_plans(text, source=str(path))


STRIPE_PRICES_VARIABLE = "KIBAN_STRIPE_PRICES"
_STRIPE_PRICES_FORMAT = (
    "expected plan=price[,price...] entries separated by ';', "
    'e.g. "pro=price_a,price_b;team=price_c"'
)
# A Stripe price id (price_...) or a legacy plan id: one word, no separators of the variable.
_PRICE_ID = re.compile(r"[^\s=,;]+")


def _prices_error(problem: str, *, show_format: bool = False) -> ConfigurationError:
    hint = f"; {_STRIPE_PRICES_FORMAT}" if show_format else ""
    return ConfigurationError(f"{STRIPE_PRICES_VARIABLE} is invalid: {problem}{hint}")


def parse_stripe_prices(value: str) -> dict[str, tuple[str, ...]]:
    """Parse ``KIBAN_STRIPE_PRICES`` into plan name -> price ids, in the order given."""
    prices: dict[str, tuple[str, ...]] = {}
    for number, raw in enumerate(value.split(";"), start=1):
        entry = raw.strip()
        name, sep, listed = (part.strip() for part in entry.partition("="))
        if not entry:
            raise _prices_error(f"entry {number} is empty", show_format=True)
        if not sep or not name:
            raise _prices_error(f"entry {entry!r} is not plan=price", show_format=True)
        if name in prices:
            raise _prices_error(f"plan {name!r} is listed twice")
        ids = tuple(price.strip() for price in listed.split(","))
        for price in ids:
            if not price:
                raise _prices_error(f"plan {name!r} has an empty price id", show_format=True)
            if not _PRICE_ID.fullmatch(price):
                raise _prices_error(
                    f"{price!r} (plan {name!r}) is not a price id", show_format=True
                )
        if len(set(ids)) < len(ids):
            repeated = next(price for price in ids if ids.count(price) > 1)
            raise _prices_error(f"price {repeated!r} is listed twice for plan {name!r}")
        prices[name] = ids
    return prices


def apply_stripe_prices(
    catalog: PlanCatalog, value: str, *, source: str = "the plans file"
) -> PlanCatalog:
    """``catalog`` with the plans ``value`` lists buying its prices instead of the file's."""
    prices = parse_stripe_prices(value)
    for name in prices:
        if name not in catalog.plans:
            raise _prices_error(
                f"plan {name!r} is not in {source} (its plans: {', '.join(sorted(catalog.plans))})"
            )
    owners: dict[str, str] = {}
    for plan in catalog.plans.values():
        for price in prices.get(plan.name, plan.stripe_price_ids):
            if price in owners:
                # The variable's plans come first in the message; a file's is said to be one.
                first, second = sorted((owners[price], plan.name), key=lambda p: p not in prices)
                from_file = "" if second in prices else f" ({second!r} has it in {source})"
                raise _prices_error(
                    f"price {price!r} is given to two plans, {first!r} and {second!r}{from_file}"
                )
            owners[price] = plan.name
    plans = {
        name: plan.model_copy(update={"stripe_price_ids": prices[name]}) if name in prices else plan
        for name, plan in catalog.plans.items()
    }
    return PlanCatalog(default_plan=catalog.default_plan, plans=plans)


def load_catalog(plans_file: Path | None = None, stripe_prices: str | None = None) -> PlanCatalog:
    """The plans file (``KIBAN_PLANS_FILE``) with ``KIBAN_STRIPE_PRICES`` applied over it."""
    catalog = load_plans(plans_file)
    if stripe_prices is None or not stripe_prices.strip():  # unset, or set to nothing
        return catalog
    return apply_stripe_prices(catalog, stripe_prices, source=str(plans_file or DEFAULT_PLANS_FILE))


@lru_cache(maxsize=8)
def _cached_catalog(plans_file: Path | None, stripe_prices: str | None) -> PlanCatalog:
    return load_catalog(plans_file, stripe_prices)


def catalog_for(settings: Settings) -> PlanCatalog:
    """The settings' catalog, parsed once per process (code outside the app: CLI, doctor)."""
    return _cached_catalog(settings.plans_file, settings.stripe_prices)
