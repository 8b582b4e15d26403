"""``/admin/api/prices``: price overrides set at run time, and which price applies to a model.

An override prices an upstream model name (exact or a glob), for every provider or for one; it wins
over the configuration's ``pricing.overrides`` and the price table, and loses only to a deployment's
own ``price:``. Every change is announced on ``lockgate:prices``: every gateway (this one before the
call answers) reloads the overrides into its price table, and the next request is priced with them.
Prices are global: users bound to an organization can neither read nor change them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from gateway_core.admin import schemas
from gateway_core.admin.api import Call, Operation, conflict, fetch_page, not_found, unprocessable
from gateway_core.admin.fields import NONBLANK, Amount, keep
from gateway_core.admin.schemas import PlainDecimal
from gateway_core.errors import GatewayError
from gateway_core.events import PRICES_CHANNEL
from gateway_core.pricing import Price, PriceList, load_price_file
from gateway_core.store import models
from gateway_core.store.models import Role

log = logging.getLogger("lockgate.admin")

#: Largest id of the ``price_overrides`` table (64-bit).
ID_MAX = 2**63 - 1

PerMillion = Annotated[Amount, Field(description="USD per million tokens")]
ModelPattern = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, pattern=NONBLANK, max_length=200)
]
ProviderName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, pattern=NONBLANK, max_length=100)
]
Source = Annotated[str, StringConstraints(max_length=1000)]


# --- bodies -------------------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PriceOverrideCreate(_Body):
    model: ModelPattern = Field(description="an upstream model name, or a glob (`gpt-4o*`)")
    provider: ProviderName | None = Field(None, description="only for this provider; null for every provider")
    input_per_mtok: PerMillion
    output_per_mtok: PerMillion
    cached_input_per_mtok: PerMillion | None = Field(
        None, description="prompt tokens read from the cache; null: input"
    )
    cache_write_per_mtok: PerMillion | None = Field(
        None, description="prompt tokens written to the cache; null: input"
    )
    source: Source = Field("", description="where the price comes from (a contract, a page, a date)")


class PriceOverrideUpdate(_Body):
    model: ModelPattern = keep()
    provider: ProviderName | None = None
    input_per_mtok: PerMillion = keep()
    output_per_mtok: PerMillion = keep()
    cached_input_per_mtok: PerMillion | None = None
    cache_write_per_mtok: PerMillion | None = None
    source: Source = keep()


class PriceOverride(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    model: str
    provider: str | None
    input_per_mtok: PlainDecimal
    output_per_mtok: PlainDecimal
    cached_input_per_mtok: PlainDecimal | None
    cache_write_per_mtok: PlainDecimal | None
    source: str
    created_at: datetime
    updated_at: datetime


class PriceOverrideList(schemas.Page[PriceOverride]):
    pass


class PriceOverrideQuery(schemas.PageQuery):
    model: Annotated[str, StringConstraints(max_length=200)] | None = Field(None, description="exact key")
    provider: Annotated[str, StringConstraints(max_length=100)] | None = None


class PriceValues(BaseModel):
    """USD per million tokens, as decimal strings."""

    input: PlainDecimal
    output: PlainDecimal
    cached_input: PlainDecimal | None
    cache_write: PlainDecimal | None


class EffectivePrice(BaseModel):
    deployment_id: str | None = Field(
        description="the deployment priced; null when no served model was named"
    )
    provider: str | None
    upstream_model: str = Field(description="the model name the price is looked up by")
    price: PriceValues | None = Field(description="null: no source knows the price (its cost is unknown)")
    source: Literal["deployment", "admin", "config", "table"] | None = Field(
        description="where the price comes from: the deployment's `price:`, an override of this API, "
        "the configuration's `pricing.overrides`, or the price table"
    )
    key: str | None = Field(description="the key that matched in that source (a name or a glob)")
    override_id: int | None = Field(description="the price override that applies (source `admin`)")


class EffectivePrices(BaseModel):
    object: Literal["list"] = "list"
    data: list[EffectivePrice]
    table_source: str = Field(description="what the price table says it is taken from")
    table_date: str = Field(description="the date of the price table")


class EffectivePriceQuery(_Body):
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(
        description="a model clients ask for (every deployment of it is shown) or an upstream model name"
    )
    provider: Annotated[str, StringConstraints(max_length=100)] | None = Field(
        None,
        description="only deployments of this provider; for an upstream name, the provider to price it for",
    )


# --- overrides as the price table takes them --------------------------------------------------------------


def override_key(model: str, provider: str | None) -> str:
    """The price table's key of an override: ``provider/model``, or ``model`` for every provider."""
    return model if provider is None else f"{provider}/{model}"


def override_price(row: models.PriceOverride) -> Price:
    return Price(row.input_per_mtok, row.output_per_mtok, row.cached_input_per_mtok, row.cache_write_per_mtok)


def override_prices(rows: Iterable[models.PriceOverride]) -> dict[str, Price]:
    """The prices of override rows by their price table keys."""
    return {override_key(row.model, row.provider): override_price(row) for row in rows}


async def prices_changed(call: Call) -> None:
    """Tell every gateway, this one first, to reload the overrides."""
    await call.publish(PRICES_CHANNEL, {"changed": "price_overrides"})


# --- handlers -----------------------------------------------------------------------------------------


def _price_id(call: Call) -> int:
    raw = str(call.request.path_params["price_id"])
    if not raw.isdigit() or int(raw) > ID_MAX:
        raise GatewayError(404, "No such price override: ids are integers.", code="not_found")
    return int(raw)


async def visible_override(call: Call) -> models.PriceOverride:
    row = await models.PriceOverride.get_or_none(id=_price_id(call))
    if row is None:
        raise not_found("price override")
    return row


def _out(row: models.PriceOverride) -> PriceOverride:
    return PriceOverride.model_validate(row, from_attributes=True)


def _check_provider(call: Call, provider: str | None) -> None:
    if provider is not None and provider not in call.gateway.providers:
        raise unprocessable(f"provider: no provider {provider!r} is registered.", param="provider")


async def _check_unique(model: str, provider: str | None, own_id: int | None = None) -> None:
    query = models.PriceOverride.filter(model=model, provider=provider)
    if own_id is not None:
        query = query.exclude(id=own_id)
    if await query.exists():
        key = override_key(model, provider)
        raise conflict(f"A price override for {key!r} exists already: change that one.", param="model")


async def list_prices(call: Call) -> PriceOverrideList:
    q: PriceOverrideQuery = call.query
    query = models.PriceOverride.all()
    if q.model is not None:
        query = query.filter(model=q.model)
    if q.provider is not None:
        query = query.filter(provider=q.provider)
    rows, paging = await fetch_page(query, q, "created_at", "id")
    return PriceOverrideList(data=[_out(row) for row in rows], **paging)


async def create_price(call: Call) -> PriceOverride:
    body: PriceOverrideCreate = call.body
    _check_provider(call, body.provider)
    await _check_unique(body.model, body.provider)
    row = await models.PriceOverride.create(**body.model_dump())
    await prices_changed(call)
    return _out(row)


async def get_price(call: Call) -> PriceOverride:
    return _out(await visible_override(call))


async def update_price(call: Call) -> PriceOverride:
    body: PriceOverrideUpdate = call.body
    row = await visible_override(call)
    changes = body.model_dump(exclude_unset=True)
    if "provider" in changes:
        _check_provider(call, changes["provider"])
    if "model" in changes or "provider" in changes:
        await _check_unique(changes.get("model", row.model), changes.get("provider", row.provider), row.id)
    row.update_from_dict(changes)
    await row.save()
    await prices_changed(call)
    return _out(row)


async def delete_price(call: Call) -> None:
    row = await visible_override(call)
    await row.delete()
    await prices_changed(call)


# --- which price applies ------------------------------------------------------------------------------

_TABLES: dict[tuple[Path, float], dict[str, Price]] = {}


def _table_prices(path: Path) -> dict[str, Price]:
    """The price table file's prices (read again when the file changes)."""
    try:
        stamp = path.stat().st_mtime
    except OSError:
        return {}
    prices = _TABLES.get((path, stamp))
    if prices is None:
        prices = load_price_file(path)[0]
        _TABLES.clear()
        _TABLES[(path, stamp)] = prices
    return prices


def _find(prices: Mapping[str, Price], names: tuple[str, ...]) -> tuple[str, Price] | None:
    """The key and price the price table's rules choose among ``prices`` for ``names``."""
    price = PriceList(prices).lookup(*names)
    if price is None:
        return None
    key = next(key for key, value in prices.items() if value is price)
    return key, price


def _values(price: Price) -> PriceValues:
    return PriceValues(
        input=price.input, output=price.output, cached_input=price.cached_input, cache_write=price.cache_write
    )


async def effective_price(call: Call) -> EffectivePrices:
    q: EffectivePriceQuery = call.query
    gateway = call.gateway
    pricing = gateway.pricing
    rows = list(await models.PriceOverride.all())
    admin = {override_key(row.model, row.provider): override_price(row) for row in rows}
    row_of = {override_key(row.model, row.provider): row.id for row in rows}
    sources: list[tuple[Literal["admin", "config", "table"], dict[str, Price]]] = [
        ("admin", admin),
        ("config", {key: Price.from_config(value) for key, value in pricing.config.overrides.items()}),
        ("table", _table_prices(pricing.path)),
    ]
    targets: list[tuple[str | None, str | None, str, Price | None]] = []
    group = gateway.models.get(q.model)
    if group is not None:
        for deployment in group.deployments:
            provider = deployment.provider
            if q.provider is None or provider.name == q.provider:
                configured = provider.deployment.price
                own = Price.from_config(configured) if configured is not None else None
                targets.append((deployment.id, provider.name, deployment.upstream_model, own))
    else:
        targets.append((None, q.provider, q.model, None))
    data = []
    for deployment_id, provider_name, model, own in targets:
        entry: dict[str, Any] = {
            "deployment_id": deployment_id,
            "provider": provider_name,
            "upstream_model": model,
            "price": None,
            "source": None,
            "key": None,
            "override_id": None,
        }
        if own is not None:
            entry.update(price=_values(own), source="deployment")
        else:
            names = (model,) if provider_name is None else (model, f"{provider_name}/{model}")
            for source, prices in sources:
                found = _find(prices, names)
                if found is not None:
                    key, price = found
                    entry.update(price=_values(price), source=source, key=key)
                    if source == "admin":
                        entry["override_id"] = row_of[key]
                    break
        data.append(EffectivePrice.model_validate(entry))
    return EffectivePrices(data=data, table_source=pricing.source, table_date=pricing.date)


# --- the operations -----------------------------------------------------------------------------------

_ID: dict[str, dict[str, Any]] = {"price_id": {"type": "integer", "minimum": 1, "maximum": ID_MAX}}

OPERATIONS = [
    Operation(
        "GET",
        "/prices",
        list_prices,
        "List price overrides",
        "prices",
        scoped=False,
        query=PriceOverrideQuery,
        response=PriceOverrideList,
    ),
    Operation(
        "POST",
        "/prices",
        create_price,
        "Create a price override",
        "prices",
        role=Role.WRITE,
        scoped=False,
        body=PriceOverrideCreate,
        response=PriceOverride,
        status=201,
        description="Applies to the next request on every gateway. One override per model and provider "
        "(409 otherwise).",
        errors=(409,),
    ),
    Operation(
        "GET",
        "/prices/effective",
        effective_price,
        "Show which price applies",
        "prices",
        scoped=False,
        query=EffectivePriceQuery,
        response=EffectivePrices,
        description="For a model clients ask for, the price of each of its deployments; for any other "
        "name, the price of that upstream model. Each names the source it comes from.",
    ),
    Operation(
        "GET",
        "/prices/{price_id}",
        get_price,
        "Get a price override",
        "prices",
        scoped=False,
        response=PriceOverride,
        errors=(404,),
        path_params=_ID,
    ),
    Operation(
        "PATCH",
        "/prices/{price_id}",
        update_price,
        "Update a price override",
        "prices",
        role=Role.WRITE,
        scoped=False,
        body=PriceOverrideUpdate,
        response=PriceOverride,
        errors=(404, 409),
        path_params=_ID,
    ),
    Operation(
        "DELETE",
        "/prices/{price_id}",
        delete_price,
        "Delete a price override",
        "prices",
        role=Role.WRITE,
        scoped=False,
        status=204,
        errors=(404,),
        path_params=_ID,
    ),
]
