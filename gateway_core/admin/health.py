"""``/admin/api/deployments/health``: circuit breaker state, error rates and checks of every deployment.

It shows what this gateway knows (see ``docs/health.md``): breaker states are shared by every
replica through Redis, request and failure counts are this worker's. It holds no secrets, so every
logged-in user may read it, organization-bound ones included.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from gateway_core.admin.api import Call, Operation


class HealthCheck(BaseModel):
    """The latest active health check of a deployment (by any replica)."""

    ok: bool = Field(description="whether the deployment answered")
    at: datetime = Field(description="when the check ran")
    error: str | None = Field(description="why it failed; null when it passed")


class DeploymentHealth(BaseModel):
    """The health of one deployment, as this gateway sees it."""

    id: str = Field(description="the deployment id (`GROUP/INDEX`, the configured `id`, or `db:<record id>`)")
    model_name: str = Field(description="the model group it serves")
    provider: str
    state: Literal["closed", "open", "half_open", "cooling_down"] = Field(
        description="`closed`: serving; `open`: refused until `until`; `half_open`: probe requests "
        "go through; `cooling_down`: refused until `until` after a 429 with a retry hint"
    )
    since: datetime = Field(description="when the deployment entered this state")
    until: datetime | None = Field(
        description="when an open breaker lets probes through, or a cool-down ends; null otherwise"
    )
    requests: int = Field(ge=0, description="calls ended within the breaker's window (this worker)")
    failures: int = Field(ge=0, description="of which failed for an upstream reason")
    error_rate: float = Field(ge=0, le=1, description="`failures / requests`; 0 without requests")
    consecutive_failures: int = Field(ge=0, description="failures since the last success (this worker)")
    last_error: Literal["server_error", "rate_limited", "timeout", "connection", "auth"] | None = Field(
        description="what the latest upstream failure was (a call or a check); null before any"
    )
    latency_ewma: float | None = Field(
        ge=0, description="moving average of successful calls' latency in seconds (this worker)"
    )
    outlier_ejected: bool = Field(description="opened by outlier detection rather than by its failures")
    active_checks: bool = Field(description="whether active health checks run for this deployment")
    last_check: HealthCheck | None


class DeploymentHealthList(BaseModel):
    data: list[DeploymentHealth]


async def deployment_health(call: Call) -> DeploymentHealthList:
    return DeploymentHealthList.model_validate({"data": call.gateway.health.snapshot()})


OPERATIONS = [
    Operation(
        "GET",
        "/deployments/health",
        deployment_health,
        "Deployment health",
        "deployments",
        response=DeploymentHealthList,
        description=(
            "The circuit breaker state of every deployment served (configured and from the database), "
            "with its recent error rate, latency and last active check. States are the same on every "
            "replica sharing Redis; counts and latencies are this worker's."
        ),
    ),
]
