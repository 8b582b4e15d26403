"""The gateway's DLP: its filters, its policies, and what it does to one request.

Built at start-up from the ``dlp:`` section (:class:`Dlp`); per request the pipeline asks it for a
:class:`DlpSession` once the key and the model group are known. The session filters the request's
texts in place, then the answer (whole, or as it streams, see :mod:`gateway_core.dlp.streams`),
and counts its findings into ``ctx.dlp_findings`` for the usage record.

Failing closed: a filter that raises or takes longer than ``dlp.timeout``, an override that cannot be
read, a route that did not say where its texts are: each refuses the request with 503
``dlp_unavailable`` and sends nothing upstream, unless the policy says ``on_error: allow`` (then the
text passes unfiltered, with a warning in the log and a finding of type ``error``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from gateway_core.config import format_validation_error
from gateway_core.dlp.actions import Blocked, Pseudonyms, Rewriter, choose, org_hash_key
from gateway_core.dlp.filter import DlpFilter, Finding
from gateway_core.dlp.policy import EVERY_TYPE, Action, DlpConfig, DlpOverride, OnError
from gateway_core.dlp.texts import REQUEST_TEXTS, RESPONSE_TEXTS, Texts
from gateway_core.errors import ConfigError, GatewayError
from gateway_core.providers import ChatStream, CompletedResponse
from gateway_core.registry import Registry

if TYPE_CHECKING:
    from gateway_core.types import RequestContext

log = logging.getLogger("lockgate.dlp")

#: The finding type that counts a filter failure let through by ``on_error: allow``.
ERROR_TYPE = "error"
_POLICY_CACHE_SIZE = 1024


def dlp_blocked(types: Iterable[str], direction: str) -> GatewayError:
    what = "request" if direction == "request" else "answer"
    names = ", ".join(sorted(set(types)))
    return GatewayError(
        400,
        f"The {what} was blocked by the data-loss prevention policy: it contains {names}.",
        code="dlp_blocked",
    )


def dlp_unavailable(direction: str = "request") -> GatewayError:
    if direction == "request":
        message = (
            "The data-loss prevention filters could not check this request; nothing was sent to the model."
        )
    else:
        message = "The data-loss prevention filters could not check the model's answer; it was withheld."
    return GatewayError(
        503,
        message,
        type="server_error",
        code="dlp_unavailable",
    )


class PolicyError(Exception):
    """An override cannot be applied (unreadable, naming an unknown filter, hashing without a key)."""


@dataclass(frozen=True, slots=True)
class Policy:
    """The DLP policy of one request, resolved from the gateway's and its overrides."""

    enabled: bool
    request: bool
    response: bool
    on_error: OnError
    actions: Mapping[str, Action]
    default: Action
    #: The filters that run, each with the entity types to ask it for.
    scans: tuple[tuple[DlpFilter, frozenset[str]], ...]
    #: Whether a finding can change a text or stop it (False: every action is ``log``).
    rewrites: bool
    #: Filters whose detection is plain synchronous code (called without a timeout task).
    inline: tuple[bool, ...]

    def active(self) -> bool:
        return self.enabled and bool(self.scans)


def _merge(layers: Iterable[DlpOverride]) -> dict[str, Any]:
    merged: dict[str, Any] = {"entities": {}}
    for layer in layers:
        for name in ("enabled", "filters", "direction", "on_error"):
            value = getattr(layer, name)
            if value is not None:
                merged[name] = value
        merged["entities"].update(layer.entities)
    return merged


class Dlp:
    """The DLP filters of the gateway and the policies that say what they do."""

    def __init__(
        self, config: DlpConfig, registry: Registry[type[DlpFilter]], *, source: str, secrets_key: str | None
    ) -> None:
        self.config = config
        self.source = source
        self.filters: dict[str, DlpFilter] = {}
        for name, options in config.filters.items():
            cls = registry.get(name)
            try:
                validated = cls.Options.model_validate(options or {})
            except ValidationError as exc:
                raise ConfigError(
                    format_validation_error(source, exc, prefix=("dlp", "filters", name))
                ) from None
            self.filters[name] = cls(validated)
        self.timeout = config.timeout
        self.max_hold = config.stream_holdback_chars
        master: bytes | None = None
        if config.hash_key is not None:
            master = config.hash_key.get_secret_value().encode()
        elif secrets_key is not None:
            master = hmac.new(secrets_key.encode(), b"lockgate-dlp-hash", hashlib.sha256).digest()
        self.hash_master = master
        # Without a list of types, every type the filters find is redacted; with one, only those listed
        # (and ``*``) are acted on. Overrides change types one by one.
        self._base = DlpOverride(
            enabled=config.enabled,
            direction=config.direction,
            entities=config.entities or {EVERY_TYPE: "redact"},
            on_error=config.on_error,
        )
        self._policies: OrderedDict[tuple[Any, ...], Policy] = OrderedDict()
        self.default: Policy | None = None
        self._uninformed_types: set[str] = set()

    # --- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every filter (they load what they need), then check the configuration's policies:
        every entity type they name must be one a configured filter reports, every filter they
        select must be configured, and ``hash`` needs a key."""
        for name, dlp_filter in self.filters.items():
            try:
                await dlp_filter.start()
            except ConfigError as exc:
                where = f"dlp.filters.{name}"
                message = str(exc) if str(exc).startswith(where) else f"{where}: {exc}"
                raise ConfigError(f"{self.source}: {message}") from None
        known = self.entity_types()
        layers: list[tuple[str, DlpOverride]] = [("dlp", self._base)]
        layers += [(f"dlp.models.{name}", o) for name, o in self.config.models.items()]
        layers += [(f"dlp.organizations.{name}", o) for name, o in self.config.organizations.items()]
        for where, override in layers:
            unknown = sorted(t for t in override.entities if t != EVERY_TYPE and t not in known)
            if unknown:
                raise ConfigError(
                    f"{self.source}: {where}.entities: no configured filter finds {', '.join(unknown)} "
                    f"(they find: {', '.join(sorted(known)) or 'nothing'})"
                )
            try:
                self._compile([self._base, override])
            except PolicyError as exc:
                raise ConfigError(f"{self.source}: {where}: {exc}") from None
        self.default = self._compile([self._base])

    async def stop(self) -> None:
        for dlp_filter in self.filters.values():
            try:
                await dlp_filter.stop()
            except Exception as exc:
                log.warning(
                    "DLP filter %s did not stop cleanly: %s: %s", dlp_filter.name, type(exc).__name__, exc
                )

    def entity_types(self) -> frozenset[str]:
        types: set[str] = set()
        for dlp_filter in self.filters.values():
            types |= dlp_filter.entity_types
        return frozenset(types)

    # --- policies ---------------------------------------------------------------------------------

    def _compile(self, layers: list[DlpOverride]) -> Policy:
        merged = _merge(layers)
        entities: dict[str, Action] = merged["entities"]
        default: Action = entities.get(EVERY_TYPE, "off")
        actions = {t: a for t, a in entities.items() if t != EVERY_TYPE}
        names = merged.get("filters")
        if names is None:
            chosen = list(self.filters.values())
        else:
            missing = [name for name in names if name not in self.filters]
            if missing:
                raise PolicyError(f"filters not configured under dlp.filters: {', '.join(missing)}")
            chosen = [self.filters[name] for name in names]
        scans: list[tuple[DlpFilter, frozenset[str]]] = []
        used: set[str] = set()
        for dlp_filter in chosen:
            types = frozenset(t for t in dlp_filter.entity_types if actions.get(t, default) != "off")
            if types:
                scans.append((dlp_filter, types))
                used |= types
        used_actions = {actions.get(t, default) for t in used}
        if "hash" in used_actions and self.hash_master is None:
            raise PolicyError("the hash action needs a key: set dlp.hash_key or secrets.key")
        direction = merged.get("direction") or "request"
        return Policy(
            enabled=merged.get("enabled", True) is not False,
            request=direction in ("request", "both"),
            response=direction in ("response", "both"),
            on_error=merged.get("on_error") or "block",
            actions=actions,
            default=default,
            scans=tuple(scans),
            rewrites=bool(used_actions - {"log"}),
            inline=tuple(not f.threaded and type(f).find_async is DlpFilter.find_async for f, _ in scans),
        )

    def policy_for(self, ctx: RequestContext) -> Policy:
        """The policy of ``ctx``'s request: the gateway's, the model group's, the organizations'
        (farthest first), the key's. Raises :class:`PolicyError` when an override cannot apply."""
        group = ctx.group.name if ctx.group is not None else ctx.model
        principal = ctx.principal
        config = self.config
        org_layers: list[Any] = []
        key_layer: Any = None
        if principal is not None:
            metadata = principal.metadata
            key_layer = metadata.get("dlp")
            ancestors = metadata.get("org_ancestors") or ()
            if config.organizations:
                for ancestor in reversed(ancestors):
                    if isinstance(ancestor, Mapping):
                        org_layers.append(self._config_org(ancestor.get("id"), ancestor.get("name")))
                        org_layers.append(ancestor.get("dlp"))
                org_layers.append(self._config_org(principal.org_id, metadata.get("org_name")))
            else:
                org_layers += [a.get("dlp") for a in reversed(ancestors) if isinstance(a, Mapping)]
            org_layers.append(metadata.get("org_dlp"))
        model_layer = config.models.get(group)
        if model_layer is None and key_layer is None and not any(org_layers):
            assert self.default is not None
            return self.default
        cache_key = (group, orjson.dumps([_plain(layer) for layer in (*org_layers, key_layer)]))
        policy = self._policies.get(cache_key)
        if policy is not None:
            self._policies.move_to_end(cache_key)
            return policy
        layers = [self._base]
        if model_layer is not None:
            layers.append(model_layer)
        for layer in (*org_layers, key_layer):
            if layer is None:
                continue
            if isinstance(layer, DlpOverride):
                layers.append(layer)
                continue
            try:
                layers.append(DlpOverride.model_validate(layer))
            except ValidationError as exc:
                raise PolicyError(f"an override of the key or its organization is invalid: {exc}") from None
        policy = self._compile(layers)
        self._policies[cache_key] = policy
        if len(self._policies) > _POLICY_CACHE_SIZE:
            self._policies.popitem(last=False)
        return policy

    def _config_org(self, org_id: Any, name: Any) -> DlpOverride | None:
        organizations = self.config.organizations
        found = organizations.get(str(org_id)) if org_id is not None else None
        if found is None and name is not None:
            found = organizations.get(str(name))
        return found

    # --- per request ------------------------------------------------------------------------------

    def session(self, ctx: RequestContext) -> DlpSession | None:
        """The DLP of ``ctx``'s request, or None when no filter runs on it."""
        try:
            policy = self.policy_for(ctx)
        except PolicyError as exc:
            log.error("request %s refused: DLP policy: %s", ctx.request_id, exc)
            raise dlp_unavailable() from None
        if not policy.active():
            return None
        hash_key = (
            org_hash_key(self.hash_master, ctx.principal.org_id if ctx.principal else None)
            if self.hash_master is not None
            else None
        )
        findings: dict[tuple[str, str, str], int] = {}
        ctx.dlp_findings = findings
        rewriter = Rewriter(policy.actions, policy.default, hash_key, Pseudonyms(), findings)
        return DlpSession(self, ctx, policy, rewriter)


def _plain(layer: Any) -> Any:
    """A layer as part of a cache key: the configuration's overrides live as long as the gateway, so
    their identity names them (no dump per request); the database's are plain JSON already."""
    return f"config:{id(layer)}" if isinstance(layer, DlpOverride) else layer


class DlpSession:
    """DLP for one request: its policy, its pseudonyms and its counts."""

    __slots__ = ("_allowed", "ctx", "dlp", "policy", "rewriter")

    def __init__(self, dlp: Dlp, ctx: RequestContext, policy: Policy, rewriter: Rewriter) -> None:
        self.dlp = dlp
        self.ctx = ctx
        self.policy = policy
        self.rewriter = rewriter
        #: (filter, direction) whose failure was let through and logged already.
        self._allowed: set[tuple[str, str]] = set()

    @property
    def pseudonyms(self) -> Pseudonyms:
        return self.rewriter.pseudonyms

    async def find(self, text: str, direction: str) -> list[Finding]:
        """What the policy's filters find in ``text``, overlaps resolved; fails closed."""
        found: list[Finding] = []
        policy = self.policy
        for (dlp_filter, types), inline in zip(policy.scans, policy.inline, strict=True):
            try:
                if inline:
                    found.extend(dlp_filter.find(text, types))
                else:
                    found.extend(await asyncio.wait_for(dlp_filter.find_async(text, types), self.dlp.timeout))
            except Exception as exc:
                self._failed(dlp_filter, exc, direction)
        if not found:
            return found
        return choose(found, self.rewriter.action_of)

    def _failed(self, dlp_filter: DlpFilter, exc: Exception, direction: str) -> None:
        """A filter raised or timed out: refuse (the default), or let the text pass and say so once
        per request, filter and direction (a stream would otherwise say it for every chunk)."""
        reason = "timed out" if isinstance(exc, TimeoutError) else f"failed: {type(exc).__name__}"
        what = "request" if direction == "request" else "answer"
        if self.policy.on_error == "allow":
            said = (dlp_filter.name, direction)
            if said in self._allowed:
                return
            self._allowed.add(said)
            # The exception's message is left out: a filter may quote the text it was given.
            log.warning(
                "request %s: DLP filter %s %s; the %s passed unfiltered (on_error: allow)",
                self.ctx.request_id,
                dlp_filter.name,
                reason,
                what,
            )
            counts = self.rewriter.counts
            key = (ERROR_TYPE, direction, "allow")
            counts[key] = counts.get(key, 0) + 1
            return
        log.error(
            "request %s: %s refused: DLP filter %s %s", self.ctx.request_id, what, dlp_filter.name, reason
        )
        raise dlp_unavailable(direction) from None

    async def filter_request(self, dialect: str, endpoint: str, body: dict[str, Any]) -> bool:
        """Filter every text of the client's ``body`` in place; True when one changed.

        Raises the client's 400 ``dlp_blocked`` error when a value is to be blocked (the types of
        every such value in the request are named), 503 ``dlp_unavailable`` when filtering failed.
        """
        if not self.policy.request:
            return False
        walker = REQUEST_TEXTS.get((dialect, endpoint))
        if walker is None:
            log.error("request %s refused: no DLP walker for %s %s", self.ctx.request_id, dialect, endpoint)
            raise dlp_unavailable()
        texts = walker(body)
        new: dict[int, str] = {}
        blocked: list[str] = []
        rewriter = self.rewriter
        for index, (container, key) in enumerate(texts.places):
            text = container[key]
            findings = await self.find(text, "request")
            if not findings:
                continue
            try:
                out = rewriter.apply(text, findings, "request")
            except Blocked as exc:
                blocked += exc.types
                continue
            if out != text:
                new[index] = out
        if blocked:
            raise dlp_blocked(blocked, "request")
        if not new:
            return False
        texts.rewrite(new)
        return True

    @property
    def on_answers(self) -> bool:
        """Whether answers go through the session (filtered, or pseudonyms to restore)."""
        return self.policy.response or bool(self.rewriter.pseudonyms)

    async def filter_response(self, result: CompletedResponse) -> CompletedResponse:
        """A complete answer filtered (and its pseudonyms restored); the same object, byte for byte,
        when nothing changed. Raises 400 ``dlp_blocked`` when a value of the answer is to be blocked."""
        if self.ctx.endpoint != "chat" or not self.on_answers:
            return result
        walker = RESPONSE_TEXTS.get(result.dialect)
        if walker is None:
            raise dlp_unavailable("response")
        try:
            body = orjson.loads(result.body)
        except orjson.JSONDecodeError:
            raise dlp_unavailable("response") from None
        if not isinstance(body, dict):
            raise dlp_unavailable("response")
        texts = walker(body)
        new: dict[int, str] = {}
        pseudonyms = self.rewriter.pseudonyms
        for index, (container, key) in enumerate(texts.places):
            text = container[key]
            out = text
            if self.policy.response:
                findings = await self.find(text, "response")
                if findings:
                    try:
                        out = self.rewriter.apply(text, findings, "response")
                    except Blocked as exc:
                        raise dlp_blocked(exc.types, "response") from None
            if pseudonyms:
                out = pseudonyms.restore(out)
            if out != text:
                new[index] = out
        if not new:
            return result
        texts.rewrite(new)
        return CompletedResponse(orjson.dumps(body), result.usage, result.headers, result.dialect)

    def stream(self, stream: ChatStream) -> ChatStream:
        """``stream`` filtered as it goes (unchanged when nothing in the answer is to be looked at)."""
        if not self.on_answers:
            return stream
        from gateway_core.dlp.streams import DlpStream

        return DlpStream(self, stream)


__all__ = ["Dlp", "DlpSession", "Policy", "Texts", "dlp_blocked", "dlp_unavailable"]
