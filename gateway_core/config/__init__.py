"""Loading and validating the YAML configuration.

Strings may reference secrets: ``${VAR}`` (environment; an error when unset or empty), ``${VAR:-default}``
and ``${file:path}`` (a file's content without the trailing newline; relative paths resolve against the
config file's folder). ``$${`` writes a literal ``${``. A deployment marked ``optional: true`` whose
references are unset is left out with a log line instead of failing start-up, so real providers
switch on when their key is in the environment.

The sections live in :mod:`~gateway_core.config.models` (model groups, deployments, routing, retries),
:mod:`~gateway_core.config.services` (server, database, Redis, usage, health, ...) and
:mod:`gateway_core.dlp.policy`; :mod:`~gateway_core.config.references` resolves the references.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, model_validator

from gateway_core.config.models import (
    DEFAULT_RETRY_STATUSES,
    CredentialConfig,
    DeploymentConfig,
    ModelGroupConfig,
    PriceConfig,
    PricingConfig,
    ProviderDefaultsConfig,
    ResilienceConfig,
    RetryConfig,
    RoutingConfig,
    RoutingRuleConfig,
    TimeoutConfig,
)
from gateway_core.config.references import (
    dotted_path,
    drop_unset_optional_deployments,
    drop_unset_optional_providers,
    format_validation_error,
    resolve_references,
)
from gateway_core.config.services import (
    POSTGRES_SCHEMES,
    SQLITE_SCHEMES,
    ActiveCheckConfig,
    AdminConfig,
    BreakerConfig,
    DatabaseConfig,
    FernetKey,
    HealthConfig,
    HttpConfig,
    LoggingConfig,
    MetricsConfig,
    OutlierConfig,
    RedisConfig,
    SecretsConfig,
    ServerConfig,
    TracingConfig,
    UsageConfig,
    redact_url,
)
from gateway_core.config.strict import Strict
from gateway_core.dlp.policy import DlpConfig
from gateway_core.errors import ConfigError

log = logging.getLogger("lockgate.config")

M = TypeVar("M", bound=BaseModel)


class GatewayConfig(Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    models: dict[str, ModelGroupConfig] = Field(default_factory=dict)
    #: ``name: {enabled: bool, ...plugin options}``; plugins not named here are enabled.
    plugins: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    #: The SQL database; without it, keys and models come from this file only.
    database: DatabaseConfig | None = None
    secrets: SecretsConfig | None = None
    redis: RedisConfig | None = None
    admin: AdminConfig = Field(default_factory=AdminConfig)
    usage: UsageConfig = Field(default_factory=UsageConfig)
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    resilience: ResilienceConfig = Field(default_factory=ResilienceConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    dlp: DlpConfig | None = Field(
        None, description="data-loss prevention: filters and policies (docs/dlp.md)"
    )
    #: Named providers clients address as ``NAME/UPSTREAM-MODEL``.
    providers: dict[str, ProviderDefaultsConfig] = Field(default_factory=dict)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    #: Named lists of outbound proxies deployments share (``proxy_pool: NAME``).
    proxy_pools: dict[str, Annotated[list[str], Field(min_length=1)]] = Field(default_factory=dict)

    _source: str = PrivateAttr("<config>")
    _base_dir: Path | None = PrivateAttr(None)
    _resolved_secrets: frozenset[str] = PrivateAttr(frozenset())

    @model_validator(mode="before")
    @classmethod
    def _provider_named_by_section(cls, data: Any) -> Any:
        providers = data.get("providers") if isinstance(data, dict) else None
        if isinstance(providers, dict):
            data["providers"] = {
                name: {"provider": name, **section}
                if isinstance(section, dict) and "provider" not in section
                else section
                for name, section in providers.items()
            }
        return data

    @model_validator(mode="after")
    def _check_references(self) -> GatewayConfig:
        problems = [
            f"providers.{name}: a provider name cannot contain '/'" for name in self.providers if "/" in name
        ]
        places: list[tuple[str, DeploymentConfig]] = [
            (f"models.{group}.deployments[{index}]", deployment)
            for group, config in self.models.items()
            for index, deployment in enumerate(config.deployments)
        ]
        places += [(f"providers.{name}", section) for name, section in self.providers.items()]
        for where, deployment in places:
            if deployment.proxy_pool is not None and deployment.proxy_pool not in self.proxy_pools:
                problems.append(f"{where}.proxy_pool: no proxy pool is named {deployment.proxy_pool!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def source(self) -> str:
        return self._source

    @property
    def resolved_secrets(self) -> frozenset[str]:
        """The values references took from the environment and from files: kept out of what clients
        read (see :mod:`gateway_core.redaction`)."""
        return self._resolved_secrets

    @property
    def base_dir(self) -> Path:
        """The folder relative paths resolve against: the config file's, else the working directory."""
        return self._base_dir or Path.cwd()

    def database_url(self) -> str | None:
        """The database URL, a relative SQLite path resolved against :attr:`base_dir`; None without one."""
        return self.database.resolved_url(self.base_dir) if self.database is not None else None

    def disabled_plugins(self) -> set[str]:
        return {name for name, conf in self.plugins.items() if conf and conf.get("enabled") is False}

    def plugin_options(self, name: str) -> dict[str, Any]:
        conf = dict(self.plugins.get(name) or {})
        conf.pop("enabled", None)
        return conf

    def plugin_config(self, name: str, model: type[M]) -> M:
        """Validate the options of plugin ``name`` against ``model``; errors name the file and key."""
        try:
            return model.model_validate(self.plugin_options(name))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(self._source, exc, prefix=("plugins", name))) from None


def parse_config(
    data: Mapping[str, Any] | None, *, source: str = "<config>", base: Path | None = None
) -> GatewayConfig:
    """Resolve references in ``data`` and validate it."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping")
    unset: dict[tuple[str | int, ...], str] = {}
    found: set[str] = set()
    try:
        resolved = resolve_references(dict(data), base or Path.cwd(), (), unset, found)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    drop_unset_optional_deployments(resolved, unset)
    drop_unset_optional_providers(resolved, unset)
    if unset:
        lines = [f"{source}: invalid configuration"]
        lines += [
            f"  {dotted_path(path)}: environment variable {var} is not set" for path, var in unset.items()
        ]
        raise ConfigError("\n".join(lines))
    try:
        config = GatewayConfig.model_validate(resolved)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None
    config._source = source
    config._base_dir = base or Path.cwd()
    config._resolved_secrets = frozenset(found)
    return config


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and validate a YAML configuration file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the configuration: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None
    return parse_config(data, source=str(file), base=file.resolve().parent)


__all__ = [
    "DEFAULT_RETRY_STATUSES",
    "POSTGRES_SCHEMES",
    "SQLITE_SCHEMES",
    "ActiveCheckConfig",
    "AdminConfig",
    "BreakerConfig",
    "ConfigError",
    "CredentialConfig",
    "DatabaseConfig",
    "DeploymentConfig",
    "DlpConfig",
    "FernetKey",
    "GatewayConfig",
    "HealthConfig",
    "HttpConfig",
    "LoggingConfig",
    "MetricsConfig",
    "ModelGroupConfig",
    "OutlierConfig",
    "PriceConfig",
    "PricingConfig",
    "ProviderDefaultsConfig",
    "RedisConfig",
    "ResilienceConfig",
    "RetryConfig",
    "RoutingConfig",
    "RoutingRuleConfig",
    "SecretsConfig",
    "ServerConfig",
    "Strict",
    "TimeoutConfig",
    "TracingConfig",
    "UsageConfig",
    "format_validation_error",
    "load_config",
    "parse_config",
    "redact_url",
]
