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
from pathlib import Path
from typing import Annotated, Any, TypeVar
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

from gateway_core.errors import ConfigError

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


class DeploymentConfig(_Strict):
    """One provider deployment serving a model group."""

    id: str | None = None
    provider: str
    model: str | None = Field(None, description="model name at the upstream; defaults to the group name")
    api_key: SecretStr | None = None
    base_url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    weight: float = Field(1.0, gt=0)
    timeout: TimeoutConfig = Field(default_factory=TimeoutConfig)
    proxy: str | None = None
    optional: bool = False
    drop_params: bool = Field(
        False, description="drop request parameters the provider cannot express instead of answering 400"
    )
    options: dict[str, Any] = Field(default_factory=dict)


class ModelGroupConfig(_Strict):
    """A model name clients use, served by one or more deployments."""

    deployments: list[DeploymentConfig] = Field(min_length=1)
    aliases: list[str] = Field(default_factory=list)
    strategy: str = "round_robin"
    owned_by: str = "lockgate"


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    max_body_bytes: int = Field(20 * 1024 * 1024, gt=0)
    keep_alive_timeout: float = Field(75.0, gt=0)
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

    _source: str = PrivateAttr("<config>")
    _base_dir: Path | None = PrivateAttr(None)

    @property
    def source(self) -> str:
        return self._source

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


def _resolve_string(value: str, base: Path) -> str | _Unset:
    unset: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(1):  # $${...} escapes a literal ${...}
            return "${" + match.group(2) + "}"
        ref = match.group(2).strip()
        if ref.startswith("file:"):
            path = Path(os.path.expanduser(ref[5:].strip()))
            path = path if path.is_absolute() else base / path
            try:
                return path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from None
        name, sep, default = ref.partition(":-")
        value = os.environ.get(name)
        if value:
            return value
        if sep:
            return default
        unset.append(name)
        return ""

    resolved = _REFERENCE.sub(replace, value)
    return _Unset(unset[0]) if unset else resolved


def _resolve(
    node: Any, base: Path, path: tuple[str | int, ...], unset: dict[tuple[str | int, ...], str]
) -> Any:
    if isinstance(node, str):
        if "${" not in node:
            return node
        try:
            value = _resolve_string(node, base)
        except ConfigError as exc:
            raise ConfigError(f"{_dotted(path)}: {exc}") from None
        if isinstance(value, _Unset):
            unset[path] = value.variable
            return ""
        return value
    if isinstance(node, dict):
        return {key: _resolve(value, base, (*path, str(key)), unset) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(value, base, (*path, index), unset) for index, value in enumerate(node)]
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


def parse_config(
    data: Mapping[str, Any] | None, *, source: str = "<config>", base: Path | None = None
) -> GatewayConfig:
    """Resolve references in ``data`` and validate it."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping")
    unset: dict[tuple[str | int, ...], str] = {}
    try:
        resolved = _resolve(dict(data), base or Path.cwd(), (), unset)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _drop_unset_optional_deployments(resolved, unset)
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
