"""Property-based requests against /admin/openapi.json (schemathesis): no answer is a server error.

Bounded: a few examples per operation, only to the test gateway on 127.0.0.1, with an admin token.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from gateway_core.admin import OPERATIONS
from tests.admin.conftest import Admin

MAX_EXAMPLES = 8


@pytest.fixture(scope="module")
def schema(admin: Admin) -> Any:
    response = admin.client.get("/admin/openapi.json")
    assert response.status_code == 200
    # Text with NUL characters is refused (PostgreSQL cannot store it): described, not generated.
    config = schemathesis.Config.from_dict({"generation": {"allow-x00": False}})
    return schemathesis.openapi.from_dict(response.json(), config=config)


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: f"{op.method} {op.path}")
def test_no_server_errors(admin: Admin, schema: Any, op: Any) -> None:
    operation = schema["/admin/api" + op.path][op.method]
    headers = admin.headers("admin")

    @given(case=operation.as_strategy())
    @settings(
        max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def run(case: Any) -> None:
        # Some valid-looking bodies are refused for what a schema cannot say (an unknown organization,
        # provider or target model): 400 by design, so the "valid data is accepted" check is left out.
        case.call_and_validate(
            base_url=admin.server.url, headers=headers, timeout=30, excluded_checks=[positive_data_acceptance]
        )

    run()
