"""The ``lowest_cost`` strategy: the cheapest deployment for each request, by its price and tokens.

The gateways use an empty price table, so a mock deployment's price is the one it configures (the
shipped table prices the mock provider at zero).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway_core.testing import GatewayServer

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def mock(id_: str, price: tuple[float, float] | None = None, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": id_, "provider": "mock", "model": f"unpriced-{id_}", **extra}
    if price is not None:
        entry["price"] = {"input": price[0], "output": price[1]}
    return entry


def served_by(server: GatewayServer, count: int, body: dict[str, Any] = BODY) -> list[str]:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=10) as client:
        answers = [client.post("/chat/completions", json=body) for _ in range(count)]
    assert [answer.status_code for answer in answers] == [200] * count
    return [answer.headers["x-lockgate-deployment"] for answer in answers]


@pytest.fixture(scope="module")
def empty_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prices") / "prices.yaml"
    path.write_text("models: {}\n", encoding="utf-8")
    return path


@pytest.fixture
def group(empty_table: Path) -> Any:
    """``group(*deployments)``: a configuration of model ``m`` balanced ``lowest_cost``."""

    def make(*deployments: dict[str, Any]) -> dict[str, Any]:
        return {
            "pricing": {"table": str(empty_table)},
            "models": {"m": {"strategy": "lowest_cost", "deployments": list(deployments)}},
        }

    return make


def test_picks_the_cheapest(group: Any) -> None:
    config = group(mock("dear", (5, 15)), mock("cheap", (0.15, 0.6)), mock("middle", (1, 4)))
    with GatewayServer(config) as server:
        assert Counter(served_by(server, 12)) == {"cheap": 12}


def test_the_cheapest_depends_on_the_request(group: Any) -> None:
    """Cheap input but dear output wins a long prompt with a short answer, and loses the reverse."""
    config = group(mock("cheap-input", (0.1, 20)), mock("cheap-output", (2, 1)))
    long_prompt = {**BODY, "messages": [{"role": "user", "content": "lorem ipsum " * 2000}], "max_tokens": 5}
    long_answer = {**BODY, "max_tokens": 4000}
    with GatewayServer(config) as server:
        assert served_by(server, 2, long_prompt) == ["cheap-input"] * 2
        assert served_by(server, 2, long_answer) == ["cheap-output"] * 2


def test_equally_cheap_deployments_take_turns(group: Any) -> None:
    config = group(mock("a", (1, 2)), mock("dear", (3, 6)), mock("b", (1, 2)))
    with GatewayServer(config) as server:
        assert Counter(served_by(server, 10)) == {"a": 5, "b": 5}


def test_unknown_prices_come_last(group: Any) -> None:
    config = group(mock("unknown"), mock("dear", (30, 60)))
    with GatewayServer(config) as server:
        assert Counter(served_by(server, 6)) == {"dear": 6}


def test_without_any_known_price_every_deployment_takes_turns(group: Any) -> None:
    config = group(mock("x"), mock("y"))
    with GatewayServer(config) as server:
        assert Counter(served_by(server, 6)) == {"x": 3, "y": 3}


def test_a_limited_deployment_is_passed_over_for_the_next_cheapest(group: Any) -> None:
    config = group(mock("cheap", (0.1, 0.2), rpm=2), mock("dear", (5, 15)))
    with GatewayServer(config) as server:
        assert served_by(server, 5) == ["cheap", "cheap", "dear", "dear", "dear"]
