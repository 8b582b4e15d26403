"""``/admin/api/prices``: price overrides, which price applies, and the cost of the next request."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from gateway_core.testing import GatewayServer
from tests.admin.conftest import Admin, admin_config
from tests.admin.test_replicas import _redis_url

MODELS = {
    "own-price": {"deployments": [{"provider": "mock", "price": {"input": 7, "output": 8}}]},
    "configured": {"deployments": [{"provider": "mock", "model": "configured-model"}]},
    "tabled": {"deployments": [{"provider": "mock", "model": "anything"}]},
    "metered": {"deployments": [{"provider": "mock", "model": "metered-model"}]},
}
PRICING = {"overrides": {"configured-model": {"input": 3, "output": 4}}}
#: Per million tokens; a request of 4 prompt and 4 completion tokens (mock: words) costs 12 of them.
PROMPT = "one two three four"


def override(admin: Admin, who: str = "root", **fields: Any) -> httpx.Response:
    body = {"model": f"m-{uuid.uuid4().hex[:8]}", "input_per_mtok": "1", "output_per_mtok": "2", **fields}
    return admin.post("/prices", who, json=body)


def test_overrides_are_created_read_changed_and_deleted(admin: Admin) -> None:
    created = override(admin, "write", provider="mock", cached_input_per_mtok="0.5", source="contract 2026")
    assert created.status_code == 201, created.text
    row = created.json()
    assert row["provider"] == "mock" and row["source"] == "contract 2026"
    assert Decimal(row["input_per_mtok"]) == 1 and Decimal(row["cached_input_per_mtok"]) == Decimal("0.5")
    assert row["cache_write_per_mtok"] is None
    price_id = row["id"]
    assert admin.get(f"/prices/{price_id}", "read").json() == row
    listed = admin.get("/prices", "read", params={"model": row["model"]}).json()
    assert [item["id"] for item in listed["data"]] == [price_id]

    changed = admin.patch(
        f"/prices/{price_id}", "write", json={"output_per_mtok": "2.5", "cached_input_per_mtok": None}
    )
    assert changed.status_code == 200, changed.text
    assert Decimal(changed.json()["output_per_mtok"]) == Decimal("2.5")
    assert changed.json()["cached_input_per_mtok"] is None

    assert admin.delete(f"/prices/{price_id}", "write").status_code == 204
    assert admin.get(f"/prices/{price_id}").status_code == 404


def test_one_override_per_model_and_provider(admin: Admin) -> None:
    model = f"dup-{uuid.uuid4().hex[:8]}"
    assert override(admin, model=model).status_code == 201
    assert override(admin, model=model).status_code == 409  # for every provider, twice
    assert override(admin, model=model, provider="mock").status_code == 201  # one provider: another key
    assert override(admin, model=model, provider="mock").status_code == 409
    other = override(admin).json()
    assert admin.patch(f"/prices/{other['id']}", json={"model": model}).status_code == 409


@pytest.mark.parametrize(
    ("fields", "param", "status"),
    [
        ({"input_per_mtok": "-1"}, "input_per_mtok", 400),
        ({"output_per_mtok": "1e11"}, "output_per_mtok", 400),
        ({"output_per_mtok": "1e3"}, "output_per_mtok", 400),
        ({"output_per_mtok": True}, "output_per_mtok", 400),
        ({"provider": "no-such-provider"}, "provider", 422),
        ({"model": "  "}, "model", 400),
        ({"extra": 1}, "extra", 400),
    ],
)
def test_invalid_overrides_are_refused(admin: Admin, fields: dict[str, Any], param: str, status: int) -> None:
    response = override(admin, **fields)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_required_prices_cannot_be_cleared_and_ids_are_integers(admin: Admin) -> None:
    price_id = override(admin).json()["id"]
    assert admin.patch(f"/prices/{price_id}", json={"input_per_mtok": None}).status_code == 400
    assert admin.get("/prices/not-a-number").status_code == 404
    assert admin.get(f"/prices/{uuid.uuid4()}").status_code == 404
    assert admin.get("/prices/99999999999").status_code == 404


def test_prices_are_global_and_changed_with_write_or_admin(admin: Admin) -> None:
    assert override(admin, "read").status_code == 403
    assert admin.get("/prices", "read").status_code == 200
    for who in ("org-admin", "org-read"):
        assert admin.get("/prices", who).status_code == 403
        assert override(admin, who).status_code == 403
    assert admin.get("/prices", None).status_code == 401


# --- which price applies, and what the next request costs --------------------------------------------------


@pytest.fixture
def priced(admin: Admin) -> Iterator[tuple[GatewayServer, httpx.Client]]:
    config = admin_config(
        admin.backend.url, models=MODELS, pricing=PRICING, plugins={"billing": {"flush_seconds": 0.05}}
    )
    with (
        GatewayServer(config) as server,
        httpx.Client(base_url=server.url + "/admin/api", headers=admin.headers("root"), timeout=30) as api,
    ):
        yield server, api
        for row in api.get("/prices", params={"limit": 200}).json()["data"]:
            api.delete(f"/prices/{row['id']}")


def effective(api: httpx.Client, **params: str) -> list[dict[str, Any]]:
    response = api.get("/prices/effective", params=params)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def test_the_effective_price_names_its_source(priced: tuple[GatewayServer, httpx.Client]) -> None:
    _, api = priced
    [own] = effective(api, model="own-price")
    assert own["source"] == "deployment" and own["deployment_id"] == "own-price/0"
    assert Decimal(own["price"]["input"]) == 7 and own["key"] is None
    [configured] = effective(api, model="configured")
    assert (configured["source"], configured["key"]) == ("config", "configured-model")
    [tabled] = effective(api, model="tabled")
    assert (tabled["source"], tabled["key"]) == ("table", "mock/*")
    assert Decimal(tabled["price"]["output"]) == 0
    response = api.get("/prices/effective", params={"model": "gpt-4o"}).json()
    assert response["data"][0]["source"] == "table" and response["data"][0]["provider"] is None
    assert response["table_source"] and response["table_date"]
    [unknown] = effective(api, model="no-such-model-anywhere", provider="acme")
    assert unknown["price"] is None and unknown["source"] is None

    row = api.post(
        "/prices",
        json={"model": "configured-*", "provider": "mock", "input_per_mtok": 5, "output_per_mtok": 6},
    ).json()
    [overridden] = effective(api, model="configured")
    assert overridden["source"] == "admin"
    assert (overridden["key"], overridden["override_id"]) == ("mock/configured-*", row["id"])
    assert effective(api, model="configured", provider="openai") == []


def chat_cost(server: GatewayServer, api: httpx.Client, key: str, user: str) -> Decimal:
    """Make one request and answer what it was charged."""
    before = api.get("/billing-records", params={"owner_id": user, "kind": "charge"}).json()["total"]
    with openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=30) as client:
        client.chat.completions.create(
            model="metered", messages=[{"role": "user", "content": PROMPT}], max_tokens=4
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = api.get(
            "/billing-records", params={"owner_id": user, "kind": "charge", "order": "desc"}
        ).json()
        if records["total"] > before:
            return -Decimal(records["data"][0]["amount"])
        time.sleep(0.05)
    raise AssertionError("the request was not charged")


def billed_key(admin: Admin, api: httpx.Client) -> tuple[str, str]:
    user = api.post("/users", json={"email": f"p-{uuid.uuid4().hex[:8]}@example.com"}).json()["id"]
    key = api.post("/keys", json={"name": "prices", "user_id": user}).json()["secret"]
    assert api.post(f"/balances/user/{user}/topups", json={"amount": "100"}).status_code == 201
    return key, user


def test_an_override_prices_the_next_request(
    admin: Admin, priced: tuple[GatewayServer, httpx.Client]
) -> None:
    server, api = priced
    key, user = billed_key(admin, api)
    assert chat_cost(server, api, key, user) == 0  # the table's price of the mock provider
    row = api.post(
        "/prices", json={"model": "metered-model", "input_per_mtok": 1000, "output_per_mtok": 2000}
    )
    assert row.status_code == 201
    assert chat_cost(server, api, key, user) == Decimal("0.012")
    api.patch(f"/prices/{row.json()['id']}", json={"output_per_mtok": "500"})
    assert chat_cost(server, api, key, user) == Decimal("0.006")
    api.delete(f"/prices/{row.json()['id']}")
    assert chat_cost(server, api, key, user) == 0


def test_an_override_reaches_every_gateway(admin: Admin) -> None:
    config = admin_config(
        admin.backend.url,
        models=MODELS,
        redis={"url": _redis_url()},
        plugins={"billing": {"flush_seconds": 0.05}},
    )
    with (
        GatewayServer(config) as first,
        GatewayServer(config) as second,
        httpx.Client(base_url=first.url + "/admin/api", headers=admin.headers("root"), timeout=30) as a,
        httpx.Client(base_url=second.url + "/admin/api", headers=admin.headers("root"), timeout=30) as b,
    ):
        key, user = billed_key(admin, a)
        assert chat_cost(second, b, key, user) == 0
        row = a.post(
            "/prices", json={"model": "metered-model", "input_per_mtok": 1000, "output_per_mtok": 2000}
        )
        assert row.status_code == 201
        try:
            deadline = time.monotonic() + 3
            cost = chat_cost(second, b, key, user)
            while cost == 0 and time.monotonic() < deadline:  # Redis pub/sub takes milliseconds
                time.sleep(0.05)
                cost = chat_cost(second, b, key, user)
            assert cost == Decimal("0.012")
        finally:
            a.delete(f"/prices/{row.json()['id']}")
