"""The gateway's own sections: server, upstream pool, logging, database, secrets, Redis, admin, usage,
health and metrics."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from gateway_core.config.strict import Strict
from gateway_core.json_depth import DEFAULT_MAX_DEPTH, HIGHEST_MAX_DEPTH


class ServerConfig(Strict):
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


class HttpConfig(Strict):
    """The worker's shared upstream connection pool."""

    max_connections: int = Field(0, ge=0, description="0 = no limit")
    max_connections_per_host: int = Field(0, ge=0, description="0 = no limit")
    keepalive_timeout: float = Field(60.0, gt=0)
    dns_cache_seconds: int = Field(300, ge=0)


class LoggingConfig(Strict):
    level: str = "INFO"
    json_lines: bool = Field(False, alias="json", description="JSON lines instead of text")
    access: bool = Field(
        False, description="one line per model request (logger lockgate.access): who, what, outcome, timing"
    )


class TracingConfig(Strict):
    """OpenTelemetry traces, exported over OTLP/HTTP (docs/observability.md)."""

    enabled: bool = Field(False, description="off: the request path makes no span at all")
    endpoint: str = Field(
        "http://127.0.0.1:4318/v1/traces", description="the OTLP/HTTP traces endpoint of a collector"
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="headers sent with each export (an API key of the backend)"
    )
    service_name: str = Field("lockgate", min_length=1, description="the service.name resource attribute")
    sample_ratio: float = Field(
        1.0, ge=0, le=1, description="share of traces started here that are kept (a client's decision wins)"
    )
    export_timeout: float = Field(10.0, gt=0, description="seconds one export may take")


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


class DatabaseConfig(Strict):
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


class SecretsConfig(Strict):
    """The key that encrypts secrets stored in the database (provider API keys of deployments)."""

    key: FernetKey = Field(description="a Fernet key: 32 random bytes, URL-safe base64")
    previous_keys: list[FernetKey] = Field(
        default_factory=list, description="older keys still accepted for decryption (key rotation)"
    )


class RedisConfig(Strict):
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


class AdminConfig(Strict):
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


class UsageConfig(Strict):
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


class BreakerConfig(Strict):
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


class OutlierConfig(Strict):
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


class ActiveCheckConfig(Strict):
    """Active health checks: a minimal request to each deployment at a fixed interval."""

    enabled: bool = Field(False, description="check every deployment (a deployment's health_check overrides)")
    interval: float = Field(30.0, gt=0, description="seconds between two checks of a deployment")
    timeout: float = Field(10.0, gt=0, description="seconds a check may take before it counts as failed")


class HealthConfig(Strict):
    """Deployment health: circuit breakers, outlier detection, active checks and 429 cool-downs."""

    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    outlier: OutlierConfig = Field(default_factory=OutlierConfig)
    active: ActiveCheckConfig = Field(default_factory=ActiveCheckConfig)
    max_retry_after: float = Field(
        300.0,
        gt=0,
        description="longest cool-down a Retry-After (of a 429, a 529 or a 503) can impose on a deployment",
    )


class MetricsConfig(Strict):
    """``GET /metrics``: Prometheus metrics of every worker (docs/observability.md)."""

    enabled: bool = Field(
        False,
        description="serve `GET /metrics` and record the request metrics (about 3% more work per request)",
    )
    auth: Literal["none", "bearer"] = Field(
        "none",
        description="`none`: anyone who reaches the port may scrape; `bearer`: scrapes must send "
        "`Authorization: Bearer <token>`",
    )
    token: SecretStr | None = Field(
        None, description="the scrapers' token with `auth: bearer` (e.g. `${ENV}`)"
    )
    owner: Literal["key", "organization"] = Field(
        "key", description="what the `owner` label holds: the API key's name, or its organization's id"
    )

    @model_validator(mode="after")
    def _token_with_bearer(self) -> MetricsConfig:
        if self.auth == "bearer" and (self.token is None or not self.token.get_secret_value()):
            raise ValueError("auth: bearer needs a token (e.g. token: ${LOCKGATE_METRICS_TOKEN})")
        return self
