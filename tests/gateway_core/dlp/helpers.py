"""Small deterministic filters and a DLP built from a policy, for the engine's tests."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from typing import Any, cast

from gateway_core import ConfigError, DlpFilter, Finding, Gateway, Principal, RequestContext
from gateway_core.dlp.engine import Dlp, DlpSession
from gateway_core.dlp.policy import DlpConfig
from gateway_core.registry import Registry
from gateway_core.types import Dialect, Endpoint

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
#: A made-up secret that may span lines: ``KEY{...}``.
SECRET = re.compile(r"KEY\{[^}]*\}")


class Emails(DlpFilter):
    """E-mail addresses, and ``KEY{...}`` secrets (which may hold line breaks)."""

    name = "emails"
    entity_types = frozenset({"EMAIL_ADDRESS", "SECRET"})

    def find(self, text: str, entity_types: frozenset[str]) -> Iterable[Finding]:
        if "EMAIL_ADDRESS" in entity_types:
            yield from (Finding("EMAIL_ADDRESS", m.start(), m.end()) for m in EMAIL.finditer(text))
        if "SECRET" in entity_types:
            yield from (Finding("SECRET", m.start(), m.end()) for m in SECRET.finditer(text))

    def holdback(self, text: str, entity_types: frozenset[str]) -> int:
        cut = super().holdback(text, entity_types)
        start = text.rfind("KEY{")
        if start >= 0 and "}" not in text[start:]:
            cut = min(cut, start)
        return cut


class Broken(DlpFilter):
    """Raises on every text, quoting it (the log must not repeat it)."""

    name = "broken"
    entity_types = frozenset({"EMAIL_ADDRESS"})

    def find(self, text: str, entity_types: frozenset[str]) -> Iterable[Finding]:
        raise RuntimeError(f"the detector crashed on {text!r}")


class Slow(DlpFilter):
    """Takes a second per text (awaiting, as a remote service would)."""

    name = "slow"
    entity_types = frozenset({"EMAIL_ADDRESS"})

    def find(self, text: str, entity_types: frozenset[str]) -> Iterable[Finding]:
        return []

    async def find_async(self, text: str, entity_types: frozenset[str]) -> list[Finding]:
        await asyncio.sleep(1)
        return []


class NeedsModel(DlpFilter):
    """Cannot start: its model is not installed."""

    name = "needs_model"
    entity_types = frozenset({"PERSON"})

    async def start(self) -> None:
        raise ConfigError("the model 'people-v1' is not installed: pip install people-v1")


def registry() -> Registry[type[DlpFilter]]:
    table: Registry[type[DlpFilter]] = Registry("DLP filter")
    for cls in (Emails, Broken, Slow, NeedsModel):
        table.register(cls.name, cls)
    return table


async def started(section: dict[str, Any], *, secrets_key: str | None = None) -> Dlp:
    """A started DLP of the ``dlp:`` section ``section`` (filters default to ``emails``)."""
    section = {"filters": {"emails": {}}, **section}
    dlp = Dlp(DlpConfig.model_validate(section), registry(), source="<test>", secrets_key=secrets_key)
    await dlp.start()
    return dlp


def context(
    *,
    dialect: Dialect = "openai",
    endpoint: Endpoint = "chat",
    principal: Principal | None = None,
    model: str = "gpt",
) -> RequestContext:
    ctx = RequestContext(cast(Gateway, None), "req-test", endpoint, dialect, {}, model=model)
    ctx.principal = principal or Principal(key_id="key-1")
    return ctx


async def session(section: dict[str, Any], **context_args: Any) -> DlpSession:
    dlp = await started(section)
    found = dlp.session(context(**context_args))
    assert found is not None
    return found
