"""Request and response bodies of the admin API; they also give the OpenAPI document its schemas.

Request bodies refuse unknown fields, so a misspelt field is a 400 instead of being ignored. In the
``*Update`` bodies every field is optional: a field left out keeps its value, ``null`` clears it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Generic, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, StringConstraints, WithJsonSchema

from gateway_core.admin.fields import NONBLANK, WHOLE, Amount, JsonObject, Timestamp, keep
from gateway_core.dlp import policy
from gateway_core.store.models import BudgetPeriod, Role

#: A decimal amount (USD, prices) written in plain notation in JSON: ``"0.00000000"``, never ``"0E-8"``.
PlainDecimal = Annotated[
    Decimal, PlainSerializer(lambda value: f"{value:f}", return_type=str, when_used="json")
]

#: Largest value of the database's integer columns (32-bit signed).
INT_MAX = 2**31 - 1

Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, pattern=NONBLANK, max_length=200)
]
ModelName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, pattern=NONBLANK, max_length=200)
]
Email = Annotated[
    str,
    # No `format: email`: the pattern is the rule (no control characters), and the server applies it.
    StringConstraints(
        min_length=3,
        max_length=320,
        pattern=r"^[ \t\r\n]*[^@\x00-\x20\x7f-\xa0]+@[^@.\x00-\x20\x7f-\xa0]+(\.[^@.\x00-\x20\x7f-\xa0]+)+[ \t\r\n]*$",
    ),
]
Password = Annotated[str, StringConstraints(min_length=8, max_length=1024)]
Count = Annotated[int, Field(ge=0, le=INT_MAX), WHOLE]
#: An amount of money, stored with 6 decimals (up to 12 digits before the point).
Money = Annotated[float, Field(ge=0, lt=1e12, allow_inf_nan=False)]


def to_decimal(amount: float | None) -> Decimal | None:
    """An amount as the database stores it (6 decimals)."""
    return None if amount is None else Decimal(repr(amount)).quantize(Decimal("0.000001"))


Metadata = Annotated[JsonObject, Field(description="free-form JSON object")]
OwnerMetadata = Annotated[
    JsonObject,
    Field(description="free-form JSON object; the DLP override is set with `dlp`, not in here"),
]
UserMetadata = Annotated[
    JsonObject,
    Field(
        description="free-form JSON object; `limits` (`rpm`, `tpm`, `max_parallel`) and `quotas` in it apply "
        'to the user\'s keys, e.g. `{"limits": {"rpm": 60}, "quotas": {"requests": {"day": 1000}}}`'
    ),
]

T = TypeVar("T")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- errors and lists -------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """Every error, OpenAI-shaped like the rest of the gateway."""

    error: ErrorDetail


class Page(BaseModel, Generic[T]):
    """One page of a listing, oldest first."""

    object: Literal["list"] = "list"
    data: list[T]
    total: int = Field(description="items matching the filters, over all pages")
    limit: int
    offset: int
    has_more: bool


class PageQuery(_Body):
    limit: int = Field(50, ge=1, le=200, description="items per page")
    offset: int = Field(0, ge=0, le=INT_MAX, description="items to skip")


# --- auth ---------------------------------------------------------------------------------------------


class LoginRequest(_Body):
    email: Annotated[str, StringConstraints(min_length=1, max_length=320)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class RefreshRequest(_Body):
    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class TokenPair(BaseModel):
    access_token: str = Field(description="send as `Authorization: Bearer <access_token>`")
    refresh_token: str = Field(description="exchange once at /admin/api/auth/refresh for a new pair")
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 (not a secret)
    expires_in: int = Field(description="seconds until the access token expires")
    refresh_expires_in: int = Field(description="seconds until the refresh token expires")


# --- DLP overrides -----------------------------------------------------------------------------------

_ENTITY_TYPE = r"^(\*|[A-Z][A-Z0-9_]*)$"
#: An entity type as the DLP filters report it (``EMAIL_ADDRESS``), or ``*`` for every type not listed.
EntityType = Annotated[str, StringConstraints(pattern=_ENTITY_TYPE, max_length=100)]
#: Entity types and their actions. Described with ``propertyNames``: pydantic's ``patternProperties``
#: would let the document accept keys the server refuses.
Entities = Annotated[
    dict[EntityType, policy.Action],
    Field(max_length=200),
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": _ENTITY_TYPE, "maxLength": 100},
            "additionalProperties": {"type": "string", "enum": list(get_args(policy.Action))},
            "maxProperties": 200,
        }
    ),
]
FilterName = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class DlpOverride(policy.DlpOverride):
    """A DLP policy that names only what it changes; see docs/dlp.md.

    For a request, the gateway's policy is taken, then the model group's, the organizations' (the
    farthest ancestor first), then the key's: each field set replaces the one before, and `entities`
    are merged type by type. `filters` must be configured (`dlp.filters`) and the `hash` action needs
    `dlp.hash_key` or `secrets.key` in the configuration (422 otherwise).
    """

    entities: Entities = Field(
        default_factory=dict,
        description="the action per entity type (upper case, e.g. `EMAIL_ADDRESS`); `*` sets it for every "
        "type not listed",
    )
    filters: list[FilterName] | None = Field(
        None,
        max_length=100,
        description="which of the configured filters run (default: all of `dlp.filters`)",
    )


_KEY_DLP = (
    "the key's DLP override (stored in `metadata.dlp`): what it sets replaces the policy of its "
    "organizations and of the gateway; null: none"
)
_ORG_DLP = (
    "the DLP override of the keys of this organization and of its descendants (stored in "
    "`metadata.dlp`); null: none"
)


# --- organizations ---------------------------------------------------------------------------------


class OrganizationCreate(_Body):
    name: Name
    parent_id: uuid.UUID | None = Field(None, description="the parent organization; none for a top-level one")
    metadata: OwnerMetadata = Field(default_factory=dict)
    dlp: DlpOverride | None = Field(None, description=_ORG_DLP)
    budget_limit: Money | None = None
    budget_period: BudgetPeriod | None = None


class OrganizationUpdate(_Body):
    name: Name = keep()
    parent_id: uuid.UUID | None = Field(None, description="moving under a descendant of itself is refused")
    metadata: OwnerMetadata | None = Field(
        None, description="replaces the metadata (the DLP override stays); null empties it"
    )
    dlp: DlpOverride | None = Field(None, description="replaces the DLP override; null removes it")
    budget_limit: Money | None = None
    budget_period: BudgetPeriod | None = None


class Organization(_Out):
    id: uuid.UUID
    name: str
    parent_id: uuid.UUID | None
    metadata: dict[str, Any]
    dlp: DlpOverride | None = Field(description=_ORG_DLP)
    budget_limit: float | None
    budget_period: BudgetPeriod | None
    created_at: datetime
    updated_at: datetime


class OrganizationList(Page[Organization]):
    pass


class OrganizationQuery(PageQuery):
    parent_id: uuid.UUID | None = Field(None, description="only the direct children of this organization")
    name: Annotated[str, StringConstraints(max_length=200)] | None = Field(None, description="exact name")


# --- users ------------------------------------------------------------------------------------------------


class UserCreate(_Body):
    email: Email
    password: Password | None = Field(
        None, description="stored as an argon2 hash; without one the user cannot log in"
    )
    name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] = ""
    role: Role = Role.READ
    org_id: uuid.UUID | None = Field(
        None, description="the user acts within this organization and its descendants; none = everywhere"
    )
    is_active: bool = True
    metadata: UserMetadata = Field(default_factory=dict)


class UserUpdate(_Body):
    email: Email = keep()
    password: Password | None = Field(None, description="a new password (write-only)")
    name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] = keep()
    role: Role = keep()
    org_id: uuid.UUID | None = None
    is_active: bool = keep()
    metadata: UserMetadata | None = Field(None, description="replaces the metadata; null empties it")


class User(_Out):
    id: uuid.UUID
    email: str
    name: str
    role: Role
    org_id: uuid.UUID | None
    is_active: bool
    has_password: bool
    metadata: dict[str, Any]
    last_login_at: datetime | None
    created_at: datetime
    updated_at: datetime


class UserList(Page[User]):
    pass


class UserQuery(PageQuery):
    org_id: uuid.UUID | None = None
    role: Role | None = None
    is_active: bool | None = None
    email: Annotated[str, StringConstraints(max_length=320)] | None = Field(None, description="exact address")


# --- API keys --------------------------------------------------------------------------------------------


class _KeySettings(_Body):
    models: list[ModelName] | None = Field(
        None, max_length=1000, description="model names or globs the key may use; null = every model"
    )
    expires_at: Timestamp | None = Field(None, description="UTC unless a zone is given; null = never")
    metadata: OwnerMetadata | None = Field(
        None,
        description="free-form JSON object; an update replaces it (the DLP override stays), null empties it",
    )
    dlp: DlpOverride | None = Field(None, description=_KEY_DLP)
    rpm_limit: Count | None = Field(None, description="requests per minute")
    tpm_limit: Count | None = Field(None, description="tokens per minute")
    max_parallel: Count | None = Field(None, description="requests in flight at once")
    budget_limit: Money | None = None
    budget_period: BudgetPeriod | None = None


class KeyCreate(_KeySettings):
    name: Name
    user_id: uuid.UUID | None = Field(None, description="the user who owns the key")
    org_id: uuid.UUID | None = Field(
        None, description="the organization that owns the key; defaults to the owner's or your own"
    )
    scopes: list[Annotated[str, StringConstraints(max_length=100)]] = Field(
        default_factory=list, max_length=100
    )


class KeyUpdate(_KeySettings):
    name: Name = keep()


class Key(_Out):
    id: uuid.UUID
    name: str
    prefix: str = Field(description="the first characters of the key, to tell keys apart")
    status: Literal["active", "expired", "revoked"]
    user_id: uuid.UUID | None
    org_id: uuid.UUID | None
    models: list[str] | None
    scopes: list[str]
    metadata: dict[str, Any]
    dlp: DlpOverride | None = Field(description=_KEY_DLP)
    rpm_limit: int | None
    tpm_limit: int | None
    max_parallel: int | None
    budget_limit: float | None
    budget_period: BudgetPeriod | None
    created_at: datetime
    updated_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class CreatedKey(Key):
    secret: str = Field(description="the API key itself: shown in this response only, never again")


class KeyList(Page[Key]):
    pass


class KeyQuery(PageQuery):
    user_id: uuid.UUID | None = None
    org_id: uuid.UUID | None = None
    status: Literal["active", "expired", "revoked"] | None = None
    name: Annotated[str, StringConstraints(max_length=200)] | None = Field(None, description="exact name")


# --- deployments ------------------------------------------------------------------------------------------


class Timeouts(_Body):
    connect: float = Field(10.0, gt=0, le=86400, allow_inf_nan=False)
    read: float = Field(300.0, gt=0, le=86400, allow_inf_nan=False)
    total: float | None = Field(None, gt=0, le=86400, allow_inf_nan=False)


#: An upstream or proxy URL: http or https only (no file://, gopher:// ...).
_URL = Annotated[
    str,
    StringConstraints(pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#]", max_length=1000),
]
_Headers = Annotated[
    dict[
        Annotated[str, StringConstraints(min_length=1, max_length=200)],
        Annotated[str, StringConstraints(max_length=8192)],
    ],
    Field(max_length=100),
]


_PerMinute = Annotated[int, Field(gt=0, le=INT_MAX), WHOLE]
_PerMillion = Amount
_UpstreamKey = Annotated[str, StringConstraints(min_length=1, max_length=8192)]
_CredentialStrategy = Literal["round_robin", "fill_first"]


class DeploymentPriceBody(_Body):
    """A deployment's own price in USD per million tokens; it comes before every other price source."""

    input: _PerMillion = Field(description="prompt tokens")
    output: _PerMillion = Field(description="completion tokens (reasoning included)")
    cached_input: _PerMillion | None = Field(None, description="prompt tokens read from the cache")
    cache_write: _PerMillion | None = Field(None, description="prompt tokens written to the cache")


class DeploymentPrice(_Out):
    """A deployment's own price in USD per million tokens, as decimal strings."""

    input: PlainDecimal
    output: PlainDecimal
    cached_input: PlainDecimal | None = None
    cache_write: PlainDecimal | None = None


class DeploymentCredentialBody(_Body):
    """One upstream credential of a deployment's pool, with its own key and limits."""

    id: Name | None = Field(
        None, description="a name for logs, never the key; default: its position in the pool (`0`, `1` ...)"
    )
    api_key: _UpstreamKey | None = Field(
        None,
        description="this credential's key: write-only, stored encrypted, never returned; default: the "
        "deployment's `api_key`. In an update, left out keeps the stored key of the credential with the "
        "same `id` (its position when it has none); `null` removes it",
    )
    rpm: _PerMinute | None = Field(None, description="requests per minute this credential may make")
    tpm: _PerMinute | None = Field(None, description="tokens per minute this credential may use")
    options: Metadata = Field(
        default_factory=dict, description="provider options merged over the deployment's"
    )


class DeploymentCredential(_Out):
    """One upstream credential of a deployment's pool (its key is never returned)."""

    id: str | None
    has_api_key: bool = Field(description="whether the credential has a key of its own")
    rpm: int | None
    tpm: int | None
    options: dict[str, Any]


class DeploymentCreate(_Body):
    model_name: ModelName = Field(description="the model name clients ask for (a new or a configured one)")
    provider: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, pattern=NONBLANK, max_length=100)
    ]
    upstream_model: ModelName | None = Field(
        None, description="model name at the upstream; defaults to model_name"
    )
    base_url: _URL | None = None
    api_key: Annotated[str, StringConstraints(min_length=1, max_length=8192)] | None = Field(
        None, description="the upstream API key: write-only, stored encrypted, never returned"
    )
    weight: float = Field(1.0, gt=0, le=1_000_000, allow_inf_nan=False)
    rpm: _PerMinute | None = Field(
        None, description="requests per minute of the whole deployment (all its credentials together)"
    )
    tpm: _PerMinute | None = Field(None, description="tokens per minute of the whole deployment")
    credentials: list[DeploymentCredentialBody] = Field(
        default_factory=list,
        max_length=100,
        description="a pool of upstream credentials, each with its own key and limits; default: one, "
        "the deployment's `api_key`",
    )
    credential_strategy: _CredentialStrategy = Field(
        "round_robin", description="which credential of the pool a call uses"
    )
    options: Metadata = Field(default_factory=dict, description="the provider's own options")
    timeout: Timeouts = Field(default_factory=Timeouts)
    headers: _Headers = Field(default_factory=dict)
    proxy: _URL | None = None
    proxies: list[_URL] = Field(
        default_factory=list, max_length=100, description="outbound proxies, the first that connects is used"
    )
    proxy_pool: Name | None = Field(
        None,
        description="the name of a `proxy_pools` entry of the configuration; at most one of `proxy`, "
        "`proxies` and `proxy_pool`",
    )
    drop_params: bool = False
    price: DeploymentPriceBody | None = Field(None, description="this deployment's price, before every other")
    health_check: bool | None = Field(
        None, description="active health checks of this deployment; null follows `health.active.enabled`"
    )
    optional: bool = Field(
        False,
        description="accepted as in the configuration, where it concerns unset `${ENV}` references; "
        "a stored deployment has none, so it changes nothing",
    )
    enabled: bool = True


class DeploymentUpdate(_Body):
    model_name: ModelName = keep()
    provider: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, pattern=NONBLANK, max_length=100)
    ] = keep()
    upstream_model: ModelName | None = None
    base_url: _URL | None = None
    api_key: Annotated[str, StringConstraints(min_length=1, max_length=8192)] | None = Field(
        None, description="a new upstream API key (write-only); null removes it"
    )
    weight: float = keep(gt=0, le=1_000_000, allow_inf_nan=False)
    rpm: _PerMinute | None = None
    tpm: _PerMinute | None = None
    credentials: list[DeploymentCredentialBody] = keep(
        "the whole pool, replacing the stored one; a credential without `api_key` keeps "
        "the stored key of the credential with the same `id`",
        max_length=100,
    )
    credential_strategy: _CredentialStrategy = keep()
    options: Metadata = keep()
    timeout: Timeouts = keep()
    headers: _Headers = keep()
    proxy: _URL | None = None
    proxies: list[_URL] = keep(max_length=100)
    proxy_pool: Name | None = None
    drop_params: bool = keep()
    price: DeploymentPriceBody | None = None
    health_check: bool | None = None
    optional: bool = keep()
    enabled: bool = keep()


class Deployment(_Out):
    id: uuid.UUID
    model_name: str
    provider: str
    upstream_model: str | None
    base_url: str | None
    has_api_key: bool = Field(description="whether an upstream API key is stored (it is never returned)")
    weight: float
    rpm: int | None
    tpm: int | None
    credentials: list[DeploymentCredential]
    credential_strategy: _CredentialStrategy
    options: dict[str, Any]
    timeout: Timeouts
    headers: dict[str, str]
    proxy: str | None
    proxies: list[str]
    proxy_pool: str | None
    drop_params: bool
    price: DeploymentPrice | None
    health_check: bool | None
    optional: bool
    enabled: bool
    created_at: datetime
    updated_at: datetime


class DeploymentList(Page[Deployment]):
    pass


class DeploymentQuery(PageQuery):
    model_name: Annotated[str, StringConstraints(max_length=200)] | None = None
    provider: Annotated[str, StringConstraints(max_length=100)] | None = None
    enabled: bool | None = None


# --- routing rules ----------------------------------------------------------------------------------------


_Priority = Annotated[int, Field(ge=-INT_MAX, le=INT_MAX), WHOLE]


class RoutingRuleCreate(_Body):
    pattern: ModelName = Field(description="a model name or glob (`gpt-4*`) clients ask for")
    target: ModelName = Field(description="the model group that serves matching requests; must exist")
    priority: _Priority = Field(100, description="lower runs first")
    enabled: bool = True


class RoutingRuleUpdate(_Body):
    pattern: ModelName = keep()
    target: ModelName = keep()
    priority: _Priority = keep()
    enabled: bool = keep()


class RoutingRule(_Out):
    id: uuid.UUID
    pattern: str
    target: str
    priority: int
    enabled: bool
    created_at: datetime
    updated_at: datetime


class RoutingRuleList(Page[RoutingRule]):
    pass


class RoutingRuleQuery(PageQuery):
    target: Annotated[str, StringConstraints(max_length=200)] | None = None
    enabled: bool | None = None


# --- usage ----------------------------------------------------------------------------------------------

_Dimension = Annotated[str, StringConstraints(max_length=200)]


class DlpFinding(BaseModel):
    """How many values of one entity type the DLP filters found in one direction, and what was done."""

    type: str = Field(description="the entity type (`EMAIL_ADDRESS`); `error` for a filter that failed")
    direction: str = Field(description="`request` or `response`")
    action: str = Field(description="the action taken (`redact`, `mask`, `hash`, `block`, ...)")
    count: int


class UsageRecord(_Out):
    """One request: who, which model and deployment, tokens, cost (USD), timing, outcome and DLP findings."""

    id: int
    request_id: str
    created_at: datetime = Field(description="when the request started")
    key_id: str | None
    user_id: str | None
    org_id: str | None
    endpoint: str
    model: str = Field(description="the model name the client asked for")
    model_group: str | None
    deployment_id: str | None
    provider: str | None
    upstream_model: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    total_tokens: int
    tokens_estimated: bool = Field(
        description="the gateway estimated the token counts: a stream cut before the upstream reported them"
    )
    cost: PlainDecimal | None = Field(description="USD as a decimal string; null when the price is unknown")
    price_known: bool
    latency_ms: int
    ttfb_ms: int | None = Field(description="time to the first byte of a streamed answer")
    status: int
    error_type: str | None
    attempts: int
    stream: bool
    dialect: str
    dlp_findings: list[DlpFinding] | None = Field(
        description="what the DLP filters found (counts, never values); [] when they found nothing, "
        "null when no filter ran"
    )


class UsageRecordList(Page[UsageRecord]):
    pass


class UsageQuery(PageQuery):
    from_: Timestamp | None = Field(None, alias="from", description="records of requests started at or after")
    to: Timestamp | None = Field(None, description="records of requests started before")
    key_id: _Dimension | None = None
    user_id: _Dimension | None = None
    org_id: _Dimension | None = None
    model: _Dimension | None = Field(None, description="the model name the client asked for")
    status: int | None = Field(None, ge=0, le=999, description="the HTTP status of the answer")
    dlp: bool | None = Field(
        None, description="true: only records with DLP findings; false: only records without"
    )
    order: Literal["asc", "desc"] = Field("asc", description="oldest (asc) or newest (desc) first")


class UsageStatsQuery(_Body):
    from_: Timestamp | None = Field(
        None, alias="from", description="start of the range, rounded down to its hour; default 24 hours ago"
    )
    to: Timestamp | None = Field(None, description="end of the range (exclusive); default now")
    interval: Literal["hour", "day", "none"] = Field(
        "none", description="one row per hour, per day or overall"
    )
    group_by: Literal["model", "provider", "key", "user", "org", "none"] = "none"
    key_id: _Dimension | None = None
    user_id: _Dimension | None = None
    org_id: _Dimension | None = None
    model: _Dimension | None = None
    provider: _Dimension | None = None


class UsageStatsRow(BaseModel):
    period: datetime | None = Field(description="start of the hour or day; null with interval=none")
    group: str | None = Field(description="the model, provider, key, user or organization; null for none")
    requests: int
    errors: int = Field(description="answers with a status of 400 or more (499: the client left)")
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost: PlainDecimal = Field(description="USD of the requests with a known price, as a decimal string")
    unknown_cost_requests: int = Field(description="requests whose price is unknown (not in cost)")
    latency_avg_ms: float | None
    latency_p50_ms: float | None = Field(description="estimated from a histogram (bucket resolution)")
    latency_p95_ms: float | None = Field(description="estimated from a histogram (bucket resolution)")


class UsageStats(BaseModel):
    object: Literal["usage.stats"] = "usage.stats"
    start: datetime = Field(description="start of the range counted: `from` rounded down to its hour")
    end: datetime = Field(description="end of the range counted (exclusive): `to`")
    interval: Literal["hour", "day", "none"]
    group_by: Literal["model", "provider", "key", "user", "org", "none"]
    data: list[UsageStatsRow]
