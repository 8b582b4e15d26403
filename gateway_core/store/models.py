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
