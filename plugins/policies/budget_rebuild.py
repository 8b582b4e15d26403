"""Budget counters rebuilt from the usage records when their store lost them.

A budget's counters are durable windows (:attr:`gateway_core.limits.Window.durable`): next to each
counter the store keeps a marker saying since when it counted everything. A take that finds neither
the marker of its period nor the previous period's (a Redis restarted empty, a gateway restarted with
memory counters, or a scope never seen) answers ``unseeded`` and takes nothing. The request then waits
while this worker sums what the scope spent in the period from the usage records (the database, plus
the records of this process not stored yet) and seeds the counter, unless another worker or replica
seeded it first (the seed and the marker are set together, only where the marker is missing, in one
atomic operation). Requests of the same scope in this worker wait for the same rebuild. A rebuild
that fails (the database is down) or takes longer than ``rebuild_timeout`` refuses the request with
503 ``budgets_unavailable``: a budget is never admitted on a count it does not know.

The first take of a new period finds the previous period's marker (markers live until the end of the
next period) and starts from zero without reading the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from gateway_core import Gateway, GatewayError
from gateway_core.limits import Verdict, Window
from gateway_core.limits.windows import calendar_period
from gateway_core.store.database import DatabaseUnavailable
from gateway_core.store.kv import RedisUnavailable
from gateway_core.usage.spent import Owner, Spent, organization_tree, spent

log = logging.getLogger("lockgate.policies.budgets")

#: What a window of a budget counts of what was spent.
AmountOf = Callable[[Window, Spent], int]


def budgets_unavailable() -> GatewayError:
    return GatewayError(
        503,
        "Budgets cannot be checked right now: their counters are being rebuilt from the usage "
        "records. Retry shortly.",
        type="server_error",
        code="budgets_unavailable",
        headers={"Retry-After": "1"},
    )


class Rebuilds:
    """The rebuilds under way in one worker, one per scope and periods."""

    def __init__(self, gateway: Gateway, amount_of: AmountOf, timeout: float) -> None:
        self.gateway = gateway
        self.amount_of = amount_of
        self.timeout = timeout
        #: Counters this worker rebuilt (seeded first), for ``/ready`` and tests.
        self.seeded = 0
        self._running: dict[tuple[str, tuple[str, ...]], asyncio.Task[None]] = {}

    async def rebuild(self, owner: Owner, owner_id: str, verdict: Verdict) -> None:
        """Seed the durable windows of an ``unseeded`` verdict's scope from the usage records;
        raises 503 ``budgets_unavailable`` when that cannot be done in time."""
        windows = [window for window in verdict.windows if window.durable]
        running = (verdict.scope, tuple(window.name for window in windows))
        task = self._running.get(running)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._rebuild(owner, owner_id, verdict, windows))
            self._running[running] = task
            task.add_done_callback(lambda _: self._running.pop(running, None))
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.shield(task)
        except TimeoutError:
            log.warning("rebuilding the budget counters of %s takes over %ss", verdict.scope, self.timeout)
            raise budgets_unavailable() from None
        except (DatabaseUnavailable, RedisUnavailable) as exc:
            log.warning("the budget counters of %s cannot be rebuilt now: %s", verdict.scope, exc)
            raise budgets_unavailable() from None
        except Exception as exc:
            log.error(
                "rebuilding the budget counters of %s failed: %s: %s", verdict.scope, type(exc).__name__, exc
            )
            raise budgets_unavailable() from None

    async def _rebuild(
        self, owner: Owner, owner_id: str, verdict: Verdict, windows: Sequence[Window]
    ) -> None:
        database = self.gateway.database
        usage_log = self.gateway.usage_log
        if database is None or usage_log is None:
            raise DatabaseUnavailable("budgets need the usage records to rebuild their counters")
        ids = await organization_tree(database, owner_id) if owner == "org_id" else {owner_id}
        unstored = await usage_log.unstored()
        totals: dict[object, Spent] = {}
        for window in windows:
            assert window.period is not None
            if window.period not in totals:
                period = calendar_period(window.period, verdict.at)
                start = None if period is None else datetime.fromtimestamp(period.start, UTC)
                end = None if period is None else datetime.fromtimestamp(period.end, UTC)
                totals[window.period] = await spent(database, owner, ids, start, end, unstored)
            amount = self.amount_of(window, totals[window.period])
            counters = self.gateway.counters
            if await counters.seed(verdict.scope, window, amount, at=verdict.at, backend=verdict.backend):
                self.seeded += 1
