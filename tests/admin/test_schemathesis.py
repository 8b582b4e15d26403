"""The admin API against its own OpenAPI document (schemathesis): every default check passes.

Per operation, schemathesis's coverage phase (boundary values, each constraint broken in turn, missing
headers, methods the path lacks) and a few fuzzed examples, with all of its default checks: no server
error, status codes, content types, headers and response bodies as documented, schema-violating data
refused and schema-valid data accepted. Schema-valid data may still be refused with 422 when it names
something that does not exist (an organization, a provider, a target model: the document cannot say
which exist), and any body with 413 when it exceeds ``server.max_body_bytes``.

The Hypothesis settings come from the loaded profile (tests/conftest.py): only the number of fuzzed
examples and the deadline are set here. Bounded: requests go only to the test gateway on 127.0.0.1, and
the PostgreSQL run generates only valid boundary values in the coverage phase (what the database
stores); the checks of what is refused do not depend on the database and run on SQLite.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.generation.hypothesis.builder import HypothesisTestConfig, HypothesisTestMode, create_test

from gateway_core.admin import OPERATIONS
from tests.admin.conftest import Admin

#: Fuzzed examples per operation, besides the coverage phase's cases.
MAX_EXAMPLES = 8
#: Statuses a schema-valid request may get besides 2xx: auth, a missing item, a conflict, a body over
#: the size limit, a reference to something that does not exist (422), a rate limit (login).
ACCEPTED = ["2xx", 401, 403, 404, 409, 413, 422, 429]
#: Statuses that refuse a schema-violating request.
REFUSED = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]


@pytest.fixture(scope="module")
def schema(admin: Admin) -> Any:
    response = admin.client.get("/admin/openapi.json")
    assert response.status_code == 200
    coverage_mode = "positive" if admin.backend.dialect == "postgres" else "all"
    config = schemathesis.Config.from_dict(
        {
            # Text with NUL characters is refused (PostgreSQL cannot store it): described, not generated.
            "generation": {"allow-x00": False},
            "phases": {"coverage": {"generation": {"mode": coverage_mode}}},
            "checks": {
                "positive_data_acceptance": {"expected-statuses": ACCEPTED},
                "negative_data_rejection": {"expected-statuses": REFUSED},
            },
        }
    )
    return schemathesis.openapi.from_dict(response.json(), config=config)


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: f"{op.method} {op.path}")
def test_conformance(admin: Admin, schema: Any, op: Any) -> None:
    operation = schema["/admin/api" + op.path][op.method]
    headers = admin.headers("admin")

    def check(case: Any) -> None:
        case.call_and_validate(base_url=admin.server.url, headers=headers, timeout=30)

    test = create_test(
        operation=operation,
        test_func=check,
        config=HypothesisTestConfig(
            explicit_settings=settings(
                max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck)
            ),
            modes=[HypothesisTestMode.COVERAGE, HypothesisTestMode.FUZZING],
            project=schema.config,
        ),
    )
    test()
