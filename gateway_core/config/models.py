"""The model groups: deployments, their credentials, prices, retries, routing rules and fallbacks."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import (
    Field,
    SecretStr,
    model_validator,
)

from gateway_core.address_guard import scheme_problem
from gateway_core.config.strict import Strict


class TimeoutConfig(Strict):
    """Upstream timeouts in seconds."""

    connect: float = Field(10.0, gt=0, description="establishing the TCP/TLS connection")
    read: float = Field(300.0, gt=0, description="longest wait for the next bytes (first token included)")
    total: float | None = Field(
        None, gt=0, description="whole call including the streamed body; none = unbounded"
    )


class PriceConfig(Strict):
    """A model's price in USD per million tokens."""

    input: Decimal = Field(ge=0, description="prompt tokens")
    output: Decimal = Field(ge=0, description="completion tokens (reasoning included)")
    cached_input: Decimal | None = Field(None, ge=0, description="prompt tokens read from the cache")
    cache_write: Decimal | None = Field(None, ge=0, description="prompt tokens written to the cache")


class PricingConfig(Strict):
    """The price table and its overrides."""

    table: str | None = Field(
        None, description="a price table file (YAML); default: the table shipped in conf/prices.yaml"
    )
    overrides: dict[str, PriceConfig] = Field(
        default_factory=dict, description="prices by model name or glob, before the table's"
    )
    default_max_output_tokens: int = Field(
        4096, gt=0, description="output tokens assumed for reservations when a request sets no max_tokens"
    )


class CredentialConfig(Strict):
    """One upstream credential of a deployment's pool, with its own rate limits."""

    id: str | None = Field(None, description="a name for logs; defaults to the position in the pool")
    api_key: SecretStr | None = Field(None, description="this credential's key; default: the deployment's")
    rpm: int | None = Field(None, gt=0, description="requests per minute this credential may make")
    tpm: int | None = Field(None, gt=0, description="tokens per minute this credential may use")
    options: dict[str, Any] = Field(
        default_factory=dict, description="provider options merged over the deployment's"
    )


class DeploymentConfig(Strict):
    """One provider deployment serving a model group."""

    id: str | None = None
    provider: str
    model: str | None = Field(None, description="model name at the upstream; defaults to the group name")
    api_key: SecretStr | None = None
    credentials: list[CredentialConfig] = Field(
        default_factory=list, description="a pool of credentials; default: one, the deployment's api_key"
    )
    credential_strategy: Literal["round_robin", "fill_first"] = Field(
        "round_robin", description="which credential of the pool a call uses"
    )
    rpm: int | None = Field(None, gt=0, description="requests per minute of the whole deployment")
    tpm: int | None = Field(None, gt=0, description="tokens per minute of the whole deployment")
    base_url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    weight: float = Field(1.0, gt=0)
    timeout: TimeoutConfig = Field(default_factory=TimeoutConfig)
    proxy: str | None = None
    proxies: list[str] = Field(
        default_factory=list, description="outbound proxies, the first that connects is used"
    )
    proxy_pool: str | None = Field(None, description="the name of a top-level proxy_pools entry")
    optional: bool = False
    drop_params: bool = Field(
        False, description="drop request parameters the provider cannot express instead of answering 400"
    )
    price: PriceConfig | None = Field(None, description="this deployment's price, before every table")
    health_check: bool | None = Field(
        None, description="active health checks of this deployment; none = follow health.active.enabled"
    )
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_proxy_setting(self) -> DeploymentConfig:
        given = [name for name in ("proxy", "proxies", "proxy_pool") if getattr(self, name)]
        if len(given) > 1:
            raise ValueError(f"set only one of {', '.join(given)}")
        ids = [credential.id for credential in self.credentials if credential.id is not None]
        if len(ids) != len(set(ids)):
            raise ValueError("credentials: two credentials have the same id")
        urls = [("base_url", self.base_url), ("proxy", self.proxy)]
        urls += [(f"proxies[{index}]", proxy) for index, proxy in enumerate(self.proxies)]
        for name, url in urls:
            problem = scheme_problem(url) if url else None
            if problem is not None:  # no file://, gopher:// ... whoever configured it
                raise ValueError(f"{name}: {problem}")
        return self


#: Upstream statuses retried by default (Anthropic answers 529 when overloaded).
DEFAULT_RETRY_STATUSES = (408, 409, 429, 500, 502, 503, 504, 529)


class RetryConfig(Strict):
    """When and how a failed upstream call is tried again (another deployment first, when there is one)."""

    attempts: int = Field(
        3, ge=1, le=20, description="calls per model group, the first included (1 = no retry)"
    )
    backoff: float = Field(0.25, ge=0, description="seconds before the first retry of the same deployment")
    max_backoff: float = Field(8.0, ge=0, description="longest wait between two attempts")
    jitter: float = Field(0.5, ge=0, le=1, description="share of each wait that is random")
    on_status: list[int] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_STATUSES),
        description="upstream HTTP statuses that are retried",
    )
    on_timeout: bool = Field(True, description="retry upstream timeouts")
    on_connection_error: bool = Field(True, description="retry refused, reset or broken connections")
    max_retry_after: float = Field(
        30.0,
        ge=0,
        description="a Retry-After up to this (of a 429, a 529 or a 503) is waited for; a longer one is "
        "not (other deployments and fallbacks are tried, else the client gets the error and its Retry-After)",
    )


class ProviderDefaultsConfig(DeploymentConfig):
    """A named provider clients address as ``NAME/UPSTREAM-MODEL`` (``providers:`` section).

    Every deployment key applies to the deployments built from it, but ``id`` and ``model``: the
    upstream model is the rest of the requested id. ``provider`` defaults to the section's name.
    """

    models: list[str] = Field(
        min_length=1, description="upstream model names or globs clients may ask for; `*` allows all"
    )

    @model_validator(mode="after")
    def _no_model(self) -> ProviderDefaultsConfig:
        if self.model is not None or self.id is not None:
            raise ValueError("id and model are not set here: the requested id names the upstream model")
        return self


class RoutingRuleConfig(Strict):
    """A routing rule of the configuration: model names matching ``match`` or ``prefix`` go to ``model``."""

    match: str | None = Field(None, min_length=1, description="an exact model name or a glob (*, ?, [...])")
    prefix: str | None = Field(None, min_length=1, description="model names that start with this")
    model: str = Field(min_length=1, description="the model name, alias or provider/model id to use")

    @model_validator(mode="after")
    def _one_pattern(self) -> RoutingRuleConfig:
        if (self.match is None) == (self.prefix is None):
            raise ValueError("set exactly one of match and prefix")
        return self


class RoutingConfig(Strict):
    """Routing of model names that are neither a model nor an alias."""

    rules: list[RoutingRuleConfig] = Field(
        default_factory=list, description="tried in order, after the database's rules"
    )


class ModelGroupConfig(Strict):
    """A model name clients use, served by one or more deployments."""

    deployments: list[DeploymentConfig] = Field(min_length=1)
    aliases: list[str] = Field(default_factory=list)
    strategy: str = "round_robin"
    owned_by: str = "lockgate"
    retry: RetryConfig | None = Field(None, description="this group's retry policy; default resilience.retry")
    fallbacks: list[str] | None = Field(
        None, description="model groups tried in order when this one fails; default resilience.fallbacks"
    )
    context_window_fallbacks: list[str] | None = Field(
        None, description="model groups tried when the prompt is too long for this one"
    )
    deadline: float | None = Field(
        None, gt=0, description="seconds for the whole request; default resilience.deadline"
    )


class ResilienceConfig(Strict):
    """Defaults of the retry, fallback and deadline policy of every model group."""

    retry: RetryConfig = Field(default_factory=RetryConfig)
    deadline: float | None = Field(
        None,
        gt=0,
        description="seconds for a whole request, retries included (streams: until the first event); "
        "none = only the upstream timeouts bound it",
    )
    fallbacks: dict[str, list[str]] = Field(
        default_factory=dict,
        description="model group (or glob) → groups tried in order when it fails",
    )
    context_window_fallbacks: dict[str, list[str]] = Field(
        default_factory=dict,
        description="model group (or glob) → groups tried when the prompt is too long for it",
    )
