"""The database models. SQLite (embedded default) and PostgreSQL run the same schema.

Secrets are never stored in clear: API keys as SHA-256 digests (plus a short visible prefix to tell
them apart), admin passwords as argon2 hashes, provider keys of database-managed deployments
encrypted with the gateway's secret key.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from tortoise import fields
from tortoise.models import Model

APP = "lockgate"


class Role(StrEnum):
    """What a user may do in the admin API; an organization-scoped user acts within its org tree."""

    ADMIN = "admin"
    WRITE = "write"
    READ = "read"


class BudgetPeriod(StrEnum):
    DAY = "day"
    MONTH = "month"
    TOTAL = "total"


class Timestamped(Model):
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        abstract = True


class Organization(Timestamped):
    id = fields.UUIDField(primary_key=True)
    name = fields.CharField(max_length=200, unique=True)
    parent: fields.ForeignKeyNullableRelation[Organization] = fields.ForeignKeyField(
        f"{APP}.Organization", related_name="children", null=True, on_delete=fields.RESTRICT
    )
    metadata: fields.Field[dict[str, Any]] = fields.JSONField(default=dict)
    # Budget fields, enforced by the policy plugins.
    budget_limit = fields.DecimalField(max_digits=18, decimal_places=6, null=True)
    budget_period = fields.CharEnumField(BudgetPeriod, max_length=8, null=True)

    class Meta:
        table = "organizations"


class User(Timestamped):
    id = fields.UUIDField(primary_key=True)
    email = fields.CharField(max_length=320, unique=True)
    name = fields.CharField(max_length=200, default="")
    role = fields.CharEnumField(Role, max_length=8, default=Role.READ)
    org: fields.ForeignKeyNullableRelation[Organization] = fields.ForeignKeyField(
        f"{APP}.Organization", related_name="users", null=True, on_delete=fields.RESTRICT
    )
    #: argon2 hash (passlib); None for users that only own keys and never log in.
    password_hash = fields.CharField(max_length=255, null=True)
    is_active = fields.BooleanField(default=True)
    last_login_at = fields.DatetimeField(null=True)
    #: Free-form; ``limits`` and ``quotas`` in it apply to the user's keys (the policy plugins).
    metadata: fields.Field[dict[str, Any]] = fields.JSONField(default=dict)
    budget_limit = fields.DecimalField(max_digits=18, decimal_places=6, null=True)
    budget_period = fields.CharEnumField(BudgetPeriod, max_length=8, null=True)

    class Meta:
        table = "users"


class ApiKey(Timestamped):
    id = fields.UUIDField(primary_key=True)
    name = fields.CharField(max_length=200)
    #: The first characters of the key, shown in listings so people can tell keys apart.
    prefix = fields.CharField(max_length=16, db_index=True)
    #: SHA-256 hex digest of the whole key; the key itself is shown once and never stored.
    digest = fields.CharField(max_length=64, unique=True)
    user: fields.ForeignKeyNullableRelation[User] = fields.ForeignKeyField(
        f"{APP}.User", related_name="api_keys", null=True, on_delete=fields.CASCADE
    )
    org: fields.ForeignKeyNullableRelation[Organization] = fields.ForeignKeyField(
        f"{APP}.Organization", related_name="api_keys", null=True, on_delete=fields.CASCADE
    )
    last_used_at = fields.DatetimeField(null=True)
    expires_at = fields.DatetimeField(null=True)
    revoked_at = fields.DatetimeField(null=True)
    #: Model names or globs the key may use; None means every model.
    allowed_models: fields.Field[list[str] | None] = fields.JSONField(null=True)
    scopes: fields.Field[list[str]] = fields.JSONField(default=list)
    metadata: fields.Field[dict[str, Any]] = fields.JSONField(default=dict)
    # Limits and budget, enforced by the policy plugins.
    rpm_limit = fields.IntField(null=True)
    tpm_limit = fields.IntField(null=True)
    max_parallel = fields.IntField(null=True)
    budget_limit = fields.DecimalField(max_digits=18, decimal_places=6, null=True)
    budget_period = fields.CharEnumField(BudgetPeriod, max_length=8, null=True)

    class Meta:
        table = "api_keys"


class DeploymentRecord(Timestamped):
    """A deployment managed at run time; adds to or overrides the configuration's model groups."""

    id = fields.UUIDField(primary_key=True)
    #: The model group (client-facing model name) this deployment serves.
    model_name = fields.CharField(max_length=200, db_index=True)
    provider = fields.CharField(max_length=100)
    upstream_model = fields.CharField(max_length=200, null=True)
    base_url = fields.CharField(max_length=1000, null=True)
    #: The upstream API key, encrypted with the gateway's secret key (Fernet); never returned.
    api_key_encrypted = fields.TextField(null=True)
    weight = fields.FloatField(default=1.0)
    #: Everything else of a configuration deployment: options, timeout, headers, proxy, drop_params.
    settings: fields.Field[dict[str, Any]] = fields.JSONField(default=dict)
    enabled = fields.BooleanField(default=True)

    class Meta:
        table = "deployments"


class RoutingRule(Timestamped):
    """Sends model names matching ``pattern`` (exact or glob) to the model group ``target``."""

    id = fields.UUIDField(primary_key=True)
    pattern = fields.CharField(max_length=200)
    target = fields.CharField(max_length=200)
    #: Lower runs first.
    priority = fields.IntField(default=100)
    enabled = fields.BooleanField(default=True)

    class Meta:
        table = "routing_rules"


# --- usage and billing ----------------------------------------------------------------------------


class OwnerType(StrEnum):
    """Who holds a balance: a user or an organization."""

    USER = "user"
    ORG = "org"


class BillingKind(StrEnum):
    TOPUP = "topup"
    CHARGE = "charge"
    ADJUSTMENT = "adjustment"


class UsageRecord(Model):
    """One request the gateway answered (or refused): who, which model, tokens, cost, timing.

    Written in batches off the request path by ``gateway_core.usage``; never holds prompt text.
    Identifiers are plain strings (no foreign keys), so history outlives deleted keys and users.
    """

    id = fields.BigIntField(primary_key=True)
    #: Unique per record (the writer's idempotency key: replaying a record twice stores it once).
    event_id = fields.CharField(max_length=32, unique=True)
    #: The request's ``x-request-id`` (the client may choose it, so it is not unique).
    request_id = fields.CharField(max_length=128)
    #: When the request started.
    created_at = fields.DatetimeField(db_index=True)
    key_id = fields.CharField(max_length=200, null=True)
    user_id = fields.CharField(max_length=200, null=True)
    org_id = fields.CharField(max_length=200, null=True)
    endpoint = fields.CharField(max_length=32)
    #: The model name the client asked for.
    model = fields.CharField(max_length=200)
    model_group = fields.CharField(max_length=200, null=True)
    deployment_id = fields.CharField(max_length=200, null=True)
    provider = fields.CharField(max_length=100, null=True)
    upstream_model = fields.CharField(max_length=200, null=True)
    prompt_tokens = fields.IntField(default=0)
    completion_tokens = fields.IntField(default=0)
    cached_tokens = fields.IntField(default=0)
    cache_write_tokens = fields.IntField(default=0)
    reasoning_tokens = fields.IntField(default=0)
    total_tokens = fields.IntField(default=0)
    #: Whether the gateway estimated the token counts (a stream cut before the upstream reported them).
    tokens_estimated = fields.BooleanField(default=False)
    #: USD; None when the price is unknown (not zero).
    cost = fields.DecimalField(max_digits=18, decimal_places=8, null=True)
    price_known = fields.BooleanField(default=True)
    latency_ms = fields.IntField(default=0)
    #: Time to the first byte of the answer; None when nothing was sent.
    ttfb_ms = fields.IntField(null=True)
    status = fields.SmallIntField(default=0)
    error_type = fields.CharField(max_length=100, null=True)
    attempts = fields.SmallIntField(default=0)
    stream = fields.BooleanField(default=False)
    dialect = fields.CharField(max_length=16)
    #: What the DLP filters found: a JSON list of {type, direction, action, count}; null when no filter ran.
    dlp_findings = fields.TextField(null=True)

    class Meta:
        table = "usage_records"
        indexes = (("key_id", "created_at"), ("org_id", "created_at"), ("model", "created_at"))


class UsageRollup(Model):
    """Usage summed per UTC hour and dimensions; the stats read these, not the raw records.

    Dimension columns hold ``""`` for "none" (so the unique constraint and upserts work on NULL-less
    columns). ``latency_histogram`` counts requests per bucket of ``gateway_core.usage.histogram``.
    """

    id = fields.BigIntField(primary_key=True)
    #: Start of the UTC hour.
    bucket = fields.DatetimeField()
    model = fields.CharField(max_length=200, default="")
    provider = fields.CharField(max_length=100, default="")
    key_id = fields.CharField(max_length=200, default="")
    user_id = fields.CharField(max_length=200, default="")
    org_id = fields.CharField(max_length=200, default="")
    requests = fields.BigIntField(default=0)
    errors = fields.BigIntField(default=0)
    prompt_tokens = fields.BigIntField(default=0)
    completion_tokens = fields.BigIntField(default=0)
    cached_tokens = fields.BigIntField(default=0)
    #: USD of the requests with a known price.
    cost = fields.DecimalField(max_digits=18, decimal_places=8, default=0)
    unknown_cost_requests = fields.BigIntField(default=0)
    latency_sum_ms = fields.BigIntField(default=0)
    latency_histogram: fields.Field[list[int]] = fields.JSONField(default=list)

    class Meta:
        table = "usage_rollups"
        unique_together = (("bucket", "model", "provider", "key_id", "user_id", "org_id"),)


class Balance(Model):
    """The prepaid amount (USD) of a user or an organization."""

    id = fields.BigIntField(primary_key=True)
    owner_type = fields.CharEnumField(OwnerType, max_length=8)
    owner_id = fields.CharField(max_length=200)
    amount = fields.DecimalField(max_digits=18, decimal_places=8, default=0)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "balances"
        unique_together = (("owner_type", "owner_id"),)


class BillingRecord(Model):
    """One movement of a balance: a top-up (positive), a charge (negative) or an adjustment."""

    id = fields.BigIntField(primary_key=True)
    #: Unique per record, the writer's idempotency key; None for records older than the column.
    event_id = fields.CharField(max_length=32, unique=True, null=True)
    created_at = fields.DatetimeField(auto_now_add=True, db_index=True)
    owner_type = fields.CharEnumField(OwnerType, max_length=8)
    owner_id = fields.CharField(max_length=200)
    kind = fields.CharEnumField(BillingKind, max_length=16)
    amount = fields.DecimalField(max_digits=18, decimal_places=8)
    balance_after = fields.DecimalField(max_digits=18, decimal_places=8, null=True)
    request_id = fields.CharField(max_length=128, null=True, db_index=True)
    note = fields.TextField(default="")
    #: The admin user who made it; None for charges made by the gateway.
    actor = fields.CharField(max_length=200, null=True)

    class Meta:
        table = "billing_records"
        indexes = (("owner_type", "owner_id", "created_at"),)


class PriceOverride(Timestamped):
    """A price (USD per million tokens) set at run time; wins over the built-in price table."""

    id = fields.BigIntField(primary_key=True)
    #: An exact model name or a glob.
    model = fields.CharField(max_length=200)
    #: Only for this provider; None for every provider.
    provider = fields.CharField(max_length=100, null=True)
    input_per_mtok = fields.DecimalField(max_digits=18, decimal_places=8)
    output_per_mtok = fields.DecimalField(max_digits=18, decimal_places=8)
    cached_input_per_mtok = fields.DecimalField(max_digits=18, decimal_places=8, null=True)
    cache_write_per_mtok = fields.DecimalField(max_digits=18, decimal_places=8, null=True)
    source = fields.TextField(default="")

    class Meta:
        table = "price_overrides"
        unique_together = (("model", "provider"),)
