"""Prices of models and the cost of calls.

A deployment's price is looked up once and remembered, in this order: the deployment's own ``price:``,
the run-time overrides (admin API, stored in the database), the configuration's
``pricing.overrides``, then the price table file (``conf/prices.yaml`` unless ``pricing.table`` names
another). Within each source, a key is an upstream model name, optionally prefixed by the provider
(``anthropic/claude-*``), exact or a glob; the most specific key wins (exact, then the glob with the
longest fixed part). A deployment found nowhere has an unknown price: its cost is ``None`` and
``RequestContext.price_known`` is False, so it is flagged rather than counted as free.

Usage follows OpenAI's terms: ``prompt_tokens`` includes the tokens read from and written to the
provider's prompt cache; ``completion_tokens`` includes reasoning tokens.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import yaml
from pydantic import ValidationError

from gateway_core.config import PriceConfig, PricingConfig, format_validation_error
from gateway_core.errors import ConfigError
from gateway_core.types import Usage

if TYPE_CHECKING:
    from gateway_core.routing import Deployment, ModelGroup

log = logging.getLogger("lockgate.pricing")

#: The price table shipped with Lockgate.
DEFAULT_TABLE = Path(__file__).resolve().parent.parent / "conf" / "prices.yaml"

_MILLION = Decimal(1_000_000)
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    #: Every rate is zero (the mock provider, self-hosted models): costs need no arithmetic.
    free: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        rates = (self.input, self.output, self.cached_input or 0, self.cache_write or 0)
        object.__setattr__(self, "free", not any(rates))

    @classmethod
    def from_config(cls, config: PriceConfig) -> Price:
        return cls(config.input, config.output, config.cached_input, config.cache_write)

    def cost(self, usage: Usage) -> Decimal:
        """What ``usage`` costs, in USD."""
        if self.free:
            return _ZERO
        cached = max(usage.cached_tokens, 0)
        written = max(usage.cache_write_tokens, 0)
        plain = max(usage.prompt_tokens - cached - written, 0)
        total = (
            plain * self.input
            + cached * (self.input if self.cached_input is None else self.cached_input)
            + written * (self.input if self.cache_write is None else self.cache_write)
            + max(usage.completion_tokens, 0) * self.output
        )
        return total / _MILLION

    def worst_case(self, prompt_tokens: int, max_output_tokens: int) -> Decimal:
        """The most a call with these token counts can cost (no cache discount), in USD."""
        dearest_input = max(self.input, self.cache_write or self.input)
        return (prompt_tokens * dearest_input + max_output_tokens * self.output) / _MILLION

    def as_dict(self) -> dict[str, str | None]:
        return {
            "input": str(self.input),
            "output": str(self.output),
            "cached_input": None if self.cached_input is None else str(self.cached_input),
            "cache_write": None if self.cache_write is None else str(self.cache_write),
        }


class PriceList:
    """Prices keyed by model names and globs, answering with the most specific match."""

    __slots__ = ("_exact", "_globs")

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._exact = {key: price for key, price in prices.items() if not _is_glob(key)}
        globs = [(key, price) for key, price in prices.items() if _is_glob(key)]
        globs.sort(key=lambda item: (-_fixed_length(item[0]), item[0]))
        self._globs = [(re.compile(fnmatch.translate(key)), price) for key, price in globs]

    def lookup(self, *names: str) -> Price | None:
        """The price of the first of ``names`` matching exactly, else of the most specific glob."""
        for name in names:
            price = self._exact.get(name)
            if price is not None:
                return price
        for pattern, price in self._globs:
            for name in names:
                if pattern.match(name):
                    return price
        return None

    def __len__(self) -> int:
        return len(self._exact) + len(self._globs)


class PriceTable:
    """Every source of prices of one gateway, and the price of each deployment (remembered)."""

    def __init__(self, config: PricingConfig, base_dir: Path | None = None) -> None:
        self.config = config
        path = Path(config.table) if config.table else DEFAULT_TABLE
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        self.path = path
        table, self.source, self.date = load_price_file(path)
        self._table = PriceList(table)
        self._configured = PriceList({k: Price.from_config(v) for k, v in config.overrides.items()})
        self._runtime = PriceList({})
        self._cache: dict[int, Price | None] = {}

    def set_overrides(self, prices: Mapping[str, Price]) -> None:
        """Replace the run-time overrides (from the database) and forget remembered prices."""
        self._runtime = PriceList(prices)
        self._cache = {}

    def price_of(self, deployment: Deployment) -> Price | None:
        """The price of ``deployment``'s upstream model; None when no source knows it."""
        key = id(deployment)
        try:
            return self._cache[key]
        except KeyError:
            pass
        configured = deployment.provider.deployment.price
        if configured is not None:
            price: Price | None = Price.from_config(configured)
        else:
            model = deployment.upstream_model
            names = (model, f"{deployment.provider.name}/{model}")
            price = (
                self._runtime.lookup(*names) or self._configured.lookup(*names) or self._table.lookup(*names)
            )
            if price is None:
                log.warning(
                    "no price for model %r of deployment %s: its cost is recorded as unknown",
                    model,
                    deployment.id,
                )
        if len(self._cache) > 10_000:  # deployments come and go with reloads
            self._cache.clear()
        self._cache[key] = price
        return price

    def max_price(self, group: ModelGroup) -> Price | None:
        """The dearest price among ``group``'s deployments (by output, then input); None when any
        deployment's price is unknown."""
        dearest: Price | None = None
        for deployment in group.deployments:
            price = self.price_of(deployment)
            if price is None:
                return None
            if dearest is None or (price.output, price.input) > (dearest.output, dearest.input):
                dearest = price
        return dearest

    def cost(self, deployment: Deployment, usage: Usage) -> Decimal | None:
        price = self.price_of(deployment)
        return None if price is None else price.cost(usage)


def load_price_file(path: Path) -> tuple[dict[str, Price], str, str]:
    """Read a price table file: ``(prices by key, source, date)``; mistakes raise ConfigError."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the price table: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise ConfigError(f"{path}: a price table needs a `models` mapping")
    prices: dict[str, Price] = {}
    for key, entry in data["models"].items():
        try:
            prices[str(key)] = Price.from_config(PriceConfig.model_validate(entry))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(str(path), exc, ("models", str(key)))) from None
    return prices, str(data.get("source") or ""), str(data.get("date") or "")


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """A quick upper-leaning estimate of a request's prompt tokens (about four bytes per token).

    Counts the messages (or an embeddings ``input``), tools and system prompt; used for reservations
    before the call, and billed only for a stream cut before the upstream reported its usage (see
    :mod:`gateway_core.estimates`).
    """
    parts = [body.get("messages"), body.get("tools"), body.get("input"), body.get("system")]
    size = len(orjson.dumps([part for part in parts if part is not None]))
    return max(1, size // 4 + 4 * len(body.get("messages") or ()))


def max_output_tokens(body: Mapping[str, Any], default: int = 4096) -> int:
    """The most output tokens a request may produce: its ``max_completion_tokens`` or ``max_tokens``,
    else ``default``. Embeddings produce none."""
    if "input" in body and "messages" not in body:
        return 0
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def _is_glob(key: str) -> bool:
    return any(char in key for char in "*?[")


def _fixed_length(pattern: str) -> int:
    return len(re.sub(r"\[[^\]]*\]|[*?]", "", pattern))
