"""Prices: the shipped table, lookups by specificity, overrides and the cost of usage."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway_core import ConfigError, parse_config
from gateway_core.gateway import Gateway
from gateway_core.pricing import (
    DEFAULT_TABLE,
    Price,
    PriceList,
    estimate_prompt_tokens,
    load_price_file,
    max_output_tokens,
)
from gateway_core.types import Usage


def gateway_with(models: dict[str, Any], **pricing: Any) -> Gateway:
    return Gateway(parse_config({"models": models, "pricing": pricing}))


def test_the_shipped_table_loads_with_its_source_and_date() -> None:
    prices, source, date = load_price_file(DEFAULT_TABLE)
    assert len(prices) > 20
    assert "pricing" in source
    assert date.startswith("20")


@pytest.mark.parametrize(
    ("names", "expected_input"),
    [
        (("gpt-4o",), "2.50"),
        (("gpt-4o-2024-08-06",), "2.50"),
        (("gpt-4o-mini",), "0.15"),  # gpt-4o-mini* is more specific than gpt-4o-20*
        (("gpt-4o-mini-2024-07-18",), "0.15"),
        (("claude-sonnet-4-5-20250929",), "3.00"),
        (("echo", "mock/echo"), "0"),
    ],
)
def test_the_most_specific_key_wins(names: tuple[str, ...], expected_input: str) -> None:
    prices, _, _ = load_price_file(DEFAULT_TABLE)
    found = PriceList(prices).lookup(*names)
    assert found is not None
    assert found.input == Decimal(expected_input)


def test_an_unknown_model_has_no_price() -> None:
    prices, _, _ = load_price_file(DEFAULT_TABLE)
    assert PriceList(prices).lookup("my-private-model", "openai/my-private-model") is None


def test_cost_counts_cache_reads_and_writes_at_their_rates() -> None:
    price = Price(Decimal(3), Decimal(15), cached_input=Decimal("0.30"), cache_write=Decimal("3.75"))
    usage = Usage(
        prompt_tokens=1_000_000, completion_tokens=100_000, cached_tokens=400_000, cache_write_tokens=100_000
    )
    # 500k plain at 3, 400k cached at 0.30, 100k written at 3.75, 100k out at 15
    assert price.cost(usage) == Decimal("1.5") + Decimal("0.12") + Decimal("0.375") + Decimal("1.5")


def test_cost_without_cache_rates_uses_the_input_rate() -> None:
    price = Price(Decimal(2), Decimal(8))
    assert price.cost(Usage(prompt_tokens=1000, completion_tokens=500, cached_tokens=200)) == Decimal("0.006")


def test_worst_case_assumes_every_output_token() -> None:
    price = Price(Decimal(1), Decimal(10))
    assert price.worst_case(1000, 2000) == Decimal("0.021")


def test_deployment_price_then_overrides_then_table() -> None:
    gateway = gateway_with(
        {
            "own": {
                "deployments": [{"provider": "mock", "model": "gpt-4o", "price": {"input": 9, "output": 9}}]
            },
            "configured": {"deployments": [{"provider": "mock", "model": "gpt-4o"}]},
            "tabled": {"deployments": [{"provider": "mock", "model": "gpt-4o-mini"}]},
            "unknown": {"deployments": [{"provider": "openai", "model": "in-house", "api_key": "k"}]},
        },
        overrides={"gpt-4o": {"input": 5, "output": 20}},
    )
    price = gateway.pricing.price_of
    assert price(gateway.models["own"].deployments[0]) == Price(Decimal(9), Decimal(9))
    assert price(gateway.models["configured"].deployments[0]) == Price(Decimal(5), Decimal(20))
    tabled = price(gateway.models["tabled"].deployments[0])
    assert tabled is not None
    assert tabled.input == Decimal("0.15")
    assert price(gateway.models["unknown"].deployments[0]) is None
    gateway.pricing.set_overrides({"gpt-4o*": Price(Decimal(1), Decimal(2))})
    assert price(gateway.models["configured"].deployments[0]) == Price(Decimal(1), Decimal(2))


def test_max_price_is_the_dearest_or_unknown() -> None:
    gateway = gateway_with(
        {
            "mixed": {
                "deployments": [
                    {"provider": "mock", "model": "a", "price": {"input": 1, "output": 4}},
                    {"provider": "mock", "model": "b", "price": {"input": 2, "output": 3}},
                ]
            },
            "partly-unknown": {
                "deployments": [
                    {"provider": "mock", "model": "a", "price": {"input": 1, "output": 4}},
                    {"provider": "openai", "model": "in-house", "api_key": "k"},
                ]
            },
        }
    )
    assert gateway.pricing.max_price(gateway.models["mixed"]) == Price(Decimal(1), Decimal(4))
    assert gateway.pricing.max_price(gateway.models["partly-unknown"]) is None


def test_a_bad_table_stops_start_up(tmp_path: Path) -> None:
    table = tmp_path / "prices.yaml"
    table.write_text("models:\n  m: {input: -1, output: 1}\n")
    with pytest.raises(ConfigError, match=r"models\.m\.input"):
        gateway_with({}, table=str(table))


def test_reservation_estimates() -> None:
    body = {"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 50}
    assert 100 <= estimate_prompt_tokens(body) <= 120
    assert max_output_tokens(body) == 50
    assert max_output_tokens({"messages": []}, default=1000) == 1000
    assert max_output_tokens({"messages": [], "max_completion_tokens": 7, "max_tokens": 9}) == 7
    assert max_output_tokens({"input": "embed me"}) == 0
