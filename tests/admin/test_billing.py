"""``/admin/api/balances`` and ``/admin/api/billing-records``: top-ups, listings, roles, organizations."""

from __future__ import annotations

import threading
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

#: 0.001 USD per prompt token and 0.002 USD per completion token; the mock provider counts words.
PRICE = {"input": 1000, "output": 2000}


def new_user(admin: Admin, org_id: str | None = None) -> str:
    body = {"email": f"billed-{uuid.uuid4().hex[:8]}@example.com", "org_id": org_id}
    response = admin.post("/users", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def top_up(admin: Admin, owner: str, amount: Any, who: str = "root", note: str = "") -> httpx.Response:
    return admin.post(f"/balances/{owner}/topups", who, json={"amount": amount, "note": note})


def test_a_top_up_makes_the_balance_and_records_who_made_it(admin: Admin) -> None:
    user = new_user(admin)
    first = top_up(admin, f"user/{user}", "10.5", who="write", note="welcome credit")
    assert first.status_code == 201, first.text
    result = first.json()
    assert result["balance"]["owner_type"] == "user"
    assert result["balance"]["owner_id"] == user
    assert Decimal(result["balance"]["amount"]) == Decimal("10.5")
    assert Decimal(result["balance"]["stored_amount"]) == Decimal("10.5")
    record = result["record"]
    assert record["kind"] == "topup"
    assert Decimal(record["amount"]) == Decimal("10.5")
    assert Decimal(record["balance_after"]) == Decimal("10.5")
    assert record["actor"] == admin.users["write"]["id"]
    assert record["note"] == "welcome credit"
    assert isinstance(record["event_id"], str) and record["event_id"]

    second = top_up(admin, f"user/{user}", 0.25)  # a JSON number works too
    assert second.status_code == 201, second.text
    assert Decimal(second.json()["record"]["balance_after"]) == Decimal("10.75")

    got = admin.get(f"/balances/user/{user}", "read")
    assert got.status_code == 200
    assert Decimal(got.json()["amount"]) == Decimal("10.75")
    listed = admin.get("/balances", "read", params={"owner_type": "user", "owner_id": user}).json()
    assert listed["total"] == 1 and Decimal(listed["data"][0]["amount"]) == Decimal("10.75")
    records = admin.get("/billing-records", params={"owner_id": user, "order": "desc"}).json()
    assert [Decimal(r["amount"]) for r in records["data"]] == [Decimal("0.25"), Decimal("10.5")]
    assert admin.get("/billing-records", params={"owner_id": user, "kind": "charge"}).json()["total"] == 0


def test_organizations_have_balances_too(admin: Admin) -> None:
    response = top_up(admin, f"org/{admin.org['id']}", "3")
    assert response.status_code == 201, response.text
    assert admin.get(f"/balances/org/{admin.org['id']}").json()["owner_type"] == "org"


@pytest.mark.parametrize(
    ("amount", "param"),
    [(0, "amount"), ("-1", "amount"), ("0.000000001", "amount"), ("1e12", "amount"), ("ten", "amount")],
)
def test_top_ups_must_be_positive_amounts(admin: Admin, amount: Any, param: str) -> None:
    response = top_up(admin, f"user/{admin.users['read']['id']}", amount)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_unknown_owners_are_404(admin: Admin) -> None:
    assert top_up(admin, f"user/{uuid.uuid4()}", "1").status_code == 404
    assert top_up(admin, f"org/{uuid.uuid4()}", "1").status_code == 404
    assert top_up(admin, "team/x", "1").status_code == 404
    assert top_up(admin, "user/someone-no-key-names", "1").status_code == 404
    assert admin.get(f"/balances/user/{uuid.uuid4()}").status_code == 404
    # A user without a balance yet has none to show.
    assert admin.get(f"/balances/user/{new_user(admin)}").status_code == 404


def test_read_users_cannot_top_up(admin: Admin) -> None:
    for who in ("read", "org-read"):
        response = top_up(admin, f"user/{admin.users['org-read']['id']}", "1", who=who)
        assert response.status_code == 403
        assert response.json()["error"]["type"] == "permission_error"


def test_organization_bound_users_see_and_top_up_their_tree_only(admin: Admin) -> None:
    inside = new_user(admin, admin.child_org["id"])
    outside = new_user(admin)
    assert top_up(admin, f"user/{outside}", "1").status_code == 201
    assert top_up(admin, f"user/{inside}", "2", who="org-write").status_code == 201
    assert top_up(admin, f"org/{admin.child_org['id']}", "4", who="org-write").status_code == 201
    # Outside the tree: as if it did not exist.
    assert top_up(admin, f"user/{outside}", "1", who="org-write").status_code == 404
    assert admin.get(f"/balances/user/{outside}", "org-read").status_code == 404
    assert admin.get(f"/balances/user/{inside}", "org-read").status_code == 200

    seen = admin.get("/balances", "org-read", params={"limit": 200}).json()["data"]
    owners = {(b["owner_type"], b["owner_id"]) for b in seen}
    assert ("user", inside) in owners and ("org", admin.child_org["id"]) in owners
    assert ("user", outside) not in owners
    records = admin.get("/billing-records", "org-read", params={"limit": 200}).json()["data"]
    assert {r["owner_id"] for r in records} <= {inside, admin.child_org["id"], admin.org["id"]} | {
        u["id"] for u in admin.users.values()
    }
    assert outside not in {r["owner_id"] for r in records}
    # Everything is visible to unbound users.
    everything = admin.get("/billing-records", "read", params={"owner_id": outside}).json()
    assert everything["total"] == 1


def test_billing_records_filter_by_time(admin: Admin) -> None:
    user = new_user(admin)
    assert top_up(admin, f"user/{user}", "1").status_code == 201
    created = admin.get("/billing-records", params={"owner_id": user}).json()["data"][0]["created_at"]
    assert admin.get("/billing-records", params={"owner_id": user, "from": created}).json()["total"] == 1
    assert admin.get("/billing-records", params={"owner_id": user, "to": created}).json()["total"] == 0
    assert admin.get("/billing-records", params={"from": "yesterday"}).status_code == 400


# --- top-ups and requests in flight ------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def billed(request: pytest.FixtureRequest, admin: Admin) -> Iterator[tuple[GatewayServer, httpx.Client]]:
    """A gateway with billing on the admin tests' database, its admin API logged in as root."""
    extra: dict[str, Any] = {
        "models": {
            "slow": {"deployments": [{"provider": "mock", "price": PRICE, "options": {"latency_ms": 1500}}]}
        },
        "plugins": {"billing": {"flush_seconds": 0.05}},
    }
    if request.param == "redis":
        extra["redis"] = {"url": _redis_url()}
    with (
        GatewayServer(admin_config(admin.backend.url, **extra)) as server,
        httpx.Client(base_url=server.url + "/admin/api", headers=admin.headers("root"), timeout=30) as api,
    ):
        yield server, api


def test_a_top_up_adds_to_the_live_balance_while_requests_are_in_flight(
    admin: Admin, billed: tuple[GatewayServer, httpx.Client]
) -> None:
    server, api = billed
    user = new_user(admin)
    key = api.post("/keys", json={"name": "in-flight", "user_id": user}).json()["secret"]
    assert api.post(f"/balances/user/{user}/topups", json={"amount": "1"}).status_code == 201

    statuses: list[int] = []

    def call() -> None:
        with openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=30) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="slow", messages=[{"role": "user", "content": "one two three four"}], max_tokens=4
            )
            statuses.append(raw.http_response.status_code)

    worker = threading.Thread(target=call)
    worker.start()
    deadline = time.monotonic() + 5
    reserved = Decimal(1)
    while reserved == 1 and time.monotonic() < deadline:  # until the request holds its reservation
        reserved = Decimal(api.get(f"/balances/user/{user}").json()["amount"])
        time.sleep(0.02)
    assert reserved < 1 and not statuses
    added = api.post(f"/balances/user/{user}/topups", json={"amount": "2"})
    assert added.status_code == 201
    assert Decimal(added.json()["balance"]["amount"]) == reserved + 2  # added to, not overwritten
    worker.join(30)
    assert statuses == [200]
    cost = Decimal("0.012")  # 4 prompt and 4 completion tokens
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        charges = api.get("/billing-records", params={"owner_id": user, "kind": "charge"}).json()["data"]
        if charges:
            break
        time.sleep(0.05)
    assert [Decimal(c["amount"]) for c in charges] == [-cost]
    balance = api.get(f"/balances/user/{user}").json()
    assert Decimal(balance["amount"]) == 3 - cost
    assert Decimal(balance["stored_amount"]) == 3 - cost
