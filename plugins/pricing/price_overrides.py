"""Price overrides from the database (``/admin/api/prices``) in every gateway's price table.

Loaded at start-up, and again on every message of ``lockgate:prices`` (sent by the admin API after
each change), after the database comes back from an outage and after the events bus reconnects (a
message may have been lost meanwhile). While the database cannot be read the overrides in use stay.
Does nothing without a ``database`` section.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway_core import Gateway, hookimpl
from gateway_core.admin.prices import override_prices
from gateway_core.events import PRICES_CHANNEL
from gateway_core.store.database import DatabaseUnavailable
from gateway_core.store.models import PriceOverride

NAME = "price_overrides"
log = logging.getLogger("lockgate.pricing")


class PriceOverrides:
    """Keeps one gateway's run-time price overrides in step with the database."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.closed = False
        self._unsubscribe = gateway.events.subscribe(PRICES_CHANNEL, self.changed)

    async def reload(self) -> bool:
        """Load every override into the price table; False (the current ones kept) when the database
        cannot be read."""
        database = self.gateway.database
        if database is None or self.closed:
            return False
        try:
            rows = await database.run(PriceOverride.all())
        except DatabaseUnavailable as exc:
            log.warning("price overrides not reloaded, the current ones stay in use: %s", exc)
            return False
        self.gateway.pricing.set_overrides(override_prices(rows))
        log.info("price overrides loaded: %d", len(rows))
        return True

    async def changed(self, message: dict[str, Any]) -> None:
        await self.reload()

    def close(self) -> None:
        self.closed = True
        self._unsubscribe()


@hookimpl
async def lockgate_startup(gateway: Gateway) -> None:
    database = gateway.database
    if database is None:
        return
    overrides = PriceOverrides(gateway)
    gateway.plugin_state[NAME] = overrides
    database.on_recover(overrides.reload)
    gateway.events.on_reconnect(overrides.reload)
    await overrides.reload()


@hookimpl
def lockgate_shutdown(gateway: Gateway) -> None:
    overrides: PriceOverrides | None = gateway.plugin_state.pop(NAME, None)
    if overrides is not None:
        overrides.close()
