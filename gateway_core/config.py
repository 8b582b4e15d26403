"""Loading and validating the YAML configuration.

Strings may reference secrets: ``${VAR}`` (environment; an error when unset or empty), ``${VAR:-default}``
and ``${file:path}`` (a file's content without the trailing newline; relative paths resolve against the
config file's folder). ``$${`` writes a literal ``${``. A deployment marked ``optional: true`` whose
references are unset is left out with a log line instead of failing start-up, so real providers
switch on when their key is in the environment.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway_core.address_guard import scheme_problem
from gateway_core.dlp.policy import DlpConfig
from gateway_core.errors import ConfigError
from gateway_core.json_depth import DEFAULT_MAX_DEPTH, HIGHEST_MAX_DEPTH

log = logging.getLogger("lockgate.config")

M = TypeVar("M", bound=BaseModel)

_REFERENCE = re.compile(r"\$(\$?)\{([^}]*)\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TimeoutConfig(_Strict):
    """Upstream timeouts in seconds."""

    connect: float = Field(10.0, gt=0, description="establishing the TCP/TLS connection")
    read: float = Field(300.0, gt=0, description="longest wait for the next bytes (first token included)")
    total: float | None = Field(
        None, gt=0, description="whole call including the streamed body; none = unbounded"
    )


class PriceConfig(_Strict):
    """A model's price in USD per million tokens."""

    input: Decimal = Field(ge=0, description="prompt tokens")
    output: Decimal = Field(ge=0, description="completion tokens (reasoning included)")
    cached_input: Decimal | None = Field(None, ge=0, description="prompt tokens read from the cache")
    cache_write: Decimal | None = Field(None, ge=0, description="prompt tokens written to the cache")


class PricingConfig(_Strict):
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


class CredentialConfig(_Strict):
    """One upstream credential of a deployment's pool, with its own rate limits."""

    id: str | None = Field(None, description="a name for logs; defaults to the position in the pool")
    api_key: SecretStr | None = Field(None, description="this credential's key; default: the deployment's")
    rpm: int | None = Field(None, gt=0, description="requests per minute this credential may make")
    tpm: int | None = Field(None, gt=0, description="tokens per minute this credential may use")
    options: dict[str, Any] = Field(
        default_factory=dict, description="provider options merged over the deployment's"
    )


class DeploymentConfig(_Strict):
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


class RetryConfig(_Strict):
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


class RoutingRuleConfig(_Strict):
    """A routing rule of the configuration: model names matching ``match`` or ``prefix`` go to ``model``."""

    match: str | None = Field(None, min_length=1, description="an exact model name or a glob (*, ?, [...])")
    prefix: str | None = Field(None, min_length=1, description="model names that start with this")
    model: str = Field(min_length=1, description="the model name, alias or provider/model id to use")

    @model_validator(mode="after")
    def _one_pattern(self) -> RoutingRuleConfig:
        if (self.match is None) == (self.prefix is None):
            raise ValueError("set exactly one of match and prefix")
        return self


class RoutingConfig(_Strict):
    """Routing of model names that are neither a model nor an alias."""

    rules: list[RoutingRuleConfig] = Field(
        default_factory=list, description="tried in order, after the database's rules"
    )


class ModelGroupConfig(_Strict):
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


class ResilienceConfig(_Strict):
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


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    max_body_bytes: int = Field(20 * 1024 * 1024, gt=0)
    max_json_depth: int = Field(
        DEFAULT_MAX_DEPTH,
        ge=1,
        le=HIGHEST_MAX_DEPTH,
        description="deepest nesting of a request's JSON body; deeper ones get 400",
    )
    keep_alive_timeout: float = Field(75.0, gt=0)
    header_timeout: float = Field(
        10.0, gt=0, description="seconds for the request line and headers to arrive (408 and close)"
    )
    body_timeout: float = Field(
        30.0, gt=0, description="seconds for a request body to arrive, plus 1 s per `body_min_rate` bytes"
    )
    body_min_rate: int = Field(
        16 * 1024, ge=0, description="bytes per second a body may arrive at without ever timing out"
    )
    graceful_timeout: float = Field(30.0, ge=0)
    access_log: bool = False


class HttpConfig(_Strict):
    """The worker's shared upstream connection pool."""

    max_connections: int = Field(0, ge=0, description="0 = no limit")
    max_connections_per_host: int = Field(0, ge=0, description="0 = no limit")
    keepalive_timeout: float = Field(60.0, gt=0)
    dns_cache_seconds: int = Field(300, ge=0)


class LoggingConfig(_Strict):
    level: str = "INFO"
    json_lines: bool = Field(False, alias="json")


SQLITE_SCHEMES = ("sqlite",)
POSTGRES_SCHEMES = ("postgres", "postgresql", "asyncpg")


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class DatabaseConfig(_Strict):
    """The SQL database: users, organizations, API keys, run-time deployments and routing rules."""

    url: str = Field(
        repr=False,
        description="sqlite://PATH (relative to the config file's folder), sqlite://:memory: "
        "or postgres://USER:PASSWORD@HOST:PORT/DATABASE",
    )
    pool_min: int = Field(1, ge=0, description="connections kept open (PostgreSQL)")
    pool_max: int = Field(10, ge=1, description="most connections per worker (PostgreSQL)")
    connect_timeout: float = Field(5.0, gt=0, description="seconds to open a connection (PostgreSQL)")
    command_timeout: float = Field(30.0, gt=0, description="seconds a statement may take (PostgreSQL)")
    write_timeout: float = Field(
        10.0,
        gt=0,
        description="seconds a write transaction (a batch of usage or billing records) may take, from "
        "taking a connection to its commit; PostgreSQL also closes a session idle this long inside a "
        "transaction",
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        scheme = url.partition("://")[0].lower() if "://" in url else ""
        if scheme not in SQLITE_SCHEMES + POSTGRES_SCHEMES:
            raise ValueError("must start with sqlite:// or postgres://")
        if scheme in SQLITE_SCHEMES and not url.partition("://")[2].split("?", 1)[0]:
            raise ValueError("names no SQLite file (sqlite://PATH or sqlite://:memory:)")
        return url

    @model_validator(mode="after")
    def _pool_bounds(self) -> DatabaseConfig:
        if self.pool_min > self.pool_max:
            raise ValueError("pool_min must not exceed pool_max")
        return self

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgres``."""
        return "sqlite" if self.url.partition("://")[0].lower() in SQLITE_SCHEMES else "postgres"

    def resolved_url(self, base: Path) -> str:
        """The URL with a relative SQLite path made absolute against ``base`` (the config file's folder)."""
        if self.dialect != "sqlite":
            return self.url
        scheme, _, rest = self.url.partition("://")
        path, sep, query = rest.partition("?")
        if path == ":memory:" or path.startswith("/"):
            return self.url
        absolute = (base / os.path.expanduser(path)).resolve()
        return f"{scheme}://{absolute}{sep}{query}"


def _fernet_key(secret: SecretStr) -> SecretStr:
    from cryptography.fernet import Fernet

    try:
        Fernet(secret.get_secret_value())
    except (ValueError, TypeError):
        raise ValueError(
            "not a Fernet key (32 bytes, URL-safe base64); make one with: "
            'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
        ) from None
    return secret


FernetKey = Annotated[SecretStr, AfterValidator(_fernet_key)]


class SecretsConfig(_Strict):
    """The key that encrypts secrets stored in the database (provider API keys of deployments)."""

    key: FernetKey = Field(description="a Fernet key: 32 random bytes, URL-safe base64")
    previous_keys: list[FernetKey] = Field(
        default_factory=list, description="older keys still accepted for decryption (key rotation)"
    )


class RedisConfig(_Strict):
    """Redis, shared by the replicas of a deployment: events, limits, budgets and health state."""

    url: str = Field(repr=False, description="redis://[:PASSWORD@]HOST:PORT/DB or rediss://...")
    cluster: bool = Field(False, description="the URL names a node of a Redis Cluster")
    timeout: float = Field(
        0.5, gt=0, description="seconds a Redis call may take before it counts as an outage"
    )
    on_outage: str = Field(
        "open",
        pattern="^(open|closed)$",
        description="while Redis is unreachable, limits and budgets fail open (enforced per worker in "
        "memory) or closed (requests refused with 503)",
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if url.partition("://")[0].lower() not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return url


class AdminConfig(_Strict):
    """The admin API. ``jwt_secret`` is checked when the admin API starts, not here."""

    jwt_secret: SecretStr | None = Field(None, description="signs the admin API's access and refresh tokens")
    access_token_minutes: int = Field(15, gt=0)
    refresh_token_days: int = Field(7, gt=0)
    allowed_upstreams: list[str] = Field(
        default_factory=list,
        description="networks (CIDR) and host names that deployments managed in the database may reach "
        "although they are loopback, private or link-local (e.g. `10.0.5.0/24` for vLLM on the LAN); "
        "see gateway_core/address_guard.py",
    )


class UsageConfig(_Strict):
    """The usage log: one record per request, written to the database in batches off the request path."""

    enabled: bool | None = Field(None, description="default: on when there is a `database` section")
    batch_size: int = Field(500, ge=1, le=5000, description="records written per transaction at most")
    flush_seconds: float = Field(
        0.2,
        gt=0,
        le=300,
        description="longest wait before a partial batch is written: what a killed process can lose",
    )
    queue_size: int = Field(
        10_000, ge=1, description="records held in memory for the writer; beyond, they go to the spool"
    )
    spool_dir: str = Field(
        "var/usage-spool",
        description="folder of the spool files (JSON lines) kept while the database is unreachable; "
        "relative to the config file's folder",
    )
    retention_days: int | None = Field(
        90, ge=1, description="days raw records are kept; none = forever (hourly rollups are kept apart)"
    )
    rollup_retention_days: int | None = Field(
        730, ge=1, description="days hourly rollups are kept; none = forever"
    )
    store_prompts: bool = Field(
        False, description="record prompt and answer text: not supported, only false is accepted"
    )

    @field_validator("store_prompts")
    @classmethod
    def _no_prompts(cls, value: bool) -> bool:
        if value:
            raise ValueError("only false is supported: the usage log never stores prompt or answer text")
        return value

    def active(self, has_database: bool) -> bool:
        """Whether usage is recorded: on by default when there is a database, never without one."""
        return has_database and (self.enabled is None or self.enabled)

    def resolved_spool_dir(self, base: Path) -> Path:
        """The spool folder, a relative path resolved against ``base`` (the config file's folder)."""
        path = Path(os.path.expanduser(self.spool_dir))
        return path if path.is_absolute() else (base / path).resolve()


class BreakerConfig(_Strict):
    """When a deployment's circuit breaker opens, and for how long."""

    failures: int = Field(5, ge=1, description="failures within `window` seconds that open the breaker")
    window: float = Field(
        30.0, gt=0, description="seconds of the sliding window failures and requests are counted in"
    )
    failure_rate: float = Field(
        0.5, gt=0, le=1, description="share of failed requests in the window that opens the breaker"
    )
    min_requests: int = Field(
        20, ge=1, description="requests in the window before `failure_rate` is considered"
    )
    cooldown: float = Field(30.0, gt=0, description="seconds the breaker stays open the first time")
    max_cooldown: float = Field(
        300.0, gt=0, description="longest open period: the cooldown doubles on each reopening up to this"
    )
    half_open_probes: int = Field(
        1, ge=1, description="requests let through at once when the cooldown is over (half-open)"
    )
    probe_timeout: float = Field(
        60.0, gt=0, description="seconds after which a probe that reported no result frees its slot"
    )

    @model_validator(mode="after")
    def _cooldown_bounds(self) -> BreakerConfig:
        if self.cooldown > self.max_cooldown:
            raise ValueError("cooldown must not exceed max_cooldown")
        return self


class OutlierConfig(_Strict):
    """Passive outlier detection: eject a deployment failing far more than the rest of its group."""

    enabled: bool = True
    factor: float = Field(
        3.0, gt=1, description="eject when the error rate exceeds the rest of the group's by this factor"
    )
    min_requests: int = Field(
        10, ge=1, description="requests in the window, of the deployment and of the rest, before judging"
    )
    min_error_rate: float = Field(
        0.2, gt=0, le=1, description="error rate below which a deployment is never ejected"
    )
    max_ejected_share: float = Field(
        0.5, ge=0, lt=1, description="largest share of a group's deployments ejected at once"
    )


class ActiveCheckConfig(_Strict):
    """Active health checks: a minimal request to each deployment at a fixed interval."""

    enabled: bool = Field(False, description="check every deployment (a deployment's health_check overrides)")
    interval: float = Field(30.0, gt=0, description="seconds between two checks of a deployment")
    timeout: float = Field(10.0, gt=0, description="seconds a check may take before it counts as failed")


class HealthConfig(_Strict):
    """Deployment health: circuit breakers, outlier detection, active checks and 429 cool-downs."""

    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    outlier: OutlierConfig = Field(default_factory=OutlierConfig)
    active: ActiveCheckConfig = Field(default_factory=ActiveCheckConfig)
    max_retry_after: float = Field(
        300.0,
        gt=0,
        description="longest cool-down a Retry-After (of a 429, a 529 or a 503) can impose on a deployment",
    )


class GatewayConfig(_Strict):
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


class _Unset:
    """Placeholder for a reference to an environment variable that is not set."""

    def __init__(self, variable: str) -> None:
        self.variable = variable


def _resolve_string(value: str, base: Path, found: set[str] | None = None) -> str | _Unset:
    """``value`` with its references resolved; the values taken from files and the environment are
    added to ``found`` (they are treated as secrets)."""
    unset: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(1):  # $${...} escapes a literal ${...}
            return "${" + match.group(2) + "}"
        ref = match.group(2).strip()
        if ref.startswith("file:"):
            path = Path(os.path.expanduser(ref[5:].strip()))
            path = path if path.is_absolute() else base / path
            try:
                content = path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from None
            if found is not None:
                found.add(content)
            return content
        name, sep, default = ref.partition(":-")
        value = os.environ.get(name)
        if value:
            if found is not None:
                found.add(value)
            return value
        if sep:
            return default
        unset.append(name)
        return ""

    resolved = _REFERENCE.sub(replace, value)
    return _Unset(unset[0]) if unset else resolved


def _resolve(
    node: Any,
    base: Path,
    path: tuple[str | int, ...],
    unset: dict[tuple[str | int, ...], str],
    found: set[str] | None = None,
) -> Any:
    if isinstance(node, str):
        if "${" not in node:
            return node
        try:
            value = _resolve_string(node, base, found)
        except ConfigError as exc:
            raise ConfigError(f"{_dotted(path)}: {exc}") from None
        if isinstance(value, _Unset):
            unset[path] = value.variable
            return ""
        return value
    if isinstance(node, dict):
        return {key: _resolve(value, base, (*path, str(key)), unset, found) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(value, base, (*path, index), unset, found) for index, value in enumerate(node)]
    return node


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top>"


def format_validation_error(source: str, exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> str:
    lines = [f"{source}: invalid configuration"]
    for error in exc.errors():
        loc = _dotted((*prefix, *error["loc"]))
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {loc}: {message}")
    return "\n".join(lines)


def _drop_unset_optional_deployments(data: dict[str, Any], unset: dict[tuple[str | int, ...], str]) -> None:
    models = data.get("models")
    if not isinstance(models, dict):
        return
    for group_name, group in list(models.items()):
        deployments = group.get("deployments") if isinstance(group, dict) else None
        if not isinstance(deployments, list):
            continue
        kept = []
        for index, deployment in enumerate(deployments):
            prefix = ("models", str(group_name), "deployments", index)
            missing = sorted({var for path, var in unset.items() if path[:4] == prefix})
            if missing and isinstance(deployment, dict) and deployment.get("optional") is True:
                log.info(
                    "deployment %s of model %r is off: %s not set",
                    index,
                    group_name,
                    ", ".join(missing),
                )
                for path in [p for p in unset if p[:4] == prefix]:
                    del unset[path]
                continue
            kept.append(deployment)
        if kept:
            group["deployments"] = kept
        else:
            del models[group_name]


def _drop_unset_optional_providers(data: dict[str, Any], unset: dict[tuple[str | int, ...], str]) -> None:
    providers = data.get("providers")
    if not isinstance(providers, dict):
        return
    for name, section in list(providers.items()):
        prefix = ("providers", str(name))
        missing = sorted({var for path, var in unset.items() if path[:2] == prefix})
        if missing and isinstance(section, dict) and section.get("optional") is True:
            log.info("provider %r is off: %s not set", name, ", ".join(missing))
            for path in [p for p in unset if p[:2] == prefix]:
                del unset[path]
            del providers[name]


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
        resolved = _resolve(dict(data), base or Path.cwd(), (), unset, found)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _drop_unset_optional_deployments(resolved, unset)
    _drop_unset_optional_providers(resolved, unset)
    if unset:
        lines = [f"{source}: invalid configuration"]
        lines += [f"  {_dotted(path)}: environment variable {var} is not set" for path, var in unset.items()]
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
