"""Plain data types shared by the core and plugins: who is calling, what was used, one request."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from gateway_core.gateway import Gateway
    from gateway_core.routing import Deployment, ModelGroup
    from gateway_core.tracing import RequestTrace

Endpoint = Literal["chat", "embeddings", "count_tokens"]
Dialect = Literal["openai", "anthropic"]


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of one request, as an auth hook returns it."""

    key_id: str
    name: str = ""
    user_id: str | None = None
    org_id: str | None = None
    scopes: frozenset[str] = frozenset()
    #: Model names or glob patterns this key may use; ``None`` means every model.
    allowed_models: tuple[str, ...] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def may_use(self, model: str) -> bool:
        allowed = self.allowed_models
        if allowed is None:
            return True
        return any(model == pattern or fnmatchcase(model, pattern) for pattern in allowed)


@dataclass(slots=True)
class Usage:
    """Token counts of one call, in OpenAI's terms."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    #: Prompt tokens written to the provider's cache (billed differently by some providers).
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    #: True when the gateway estimated the counts (a stream cut short before the upstream reported
    #: them, see :mod:`gateway_core.estimates`), False when the upstream reported them.
    estimated: bool = False

    @classmethod
    def from_openai(cls, usage: Mapping[str, Any] | None) -> Usage | None:
        if type(usage) is not dict and not isinstance(usage, Mapping):
            return None
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        return cls(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=int(usage.get("total_tokens") or prompt + completion),
            cached_tokens=int(prompt_details.get("cached_tokens") or 0),
            cache_write_tokens=int(prompt_details.get("cache_write_tokens") or 0),
            reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
        )


@dataclass(slots=True, eq=False)
class RequestContext:
    """Everything the pipeline knows about one request; passed to the per-request hooks."""

    gateway: Gateway
    request_id: str
    endpoint: Endpoint
    dialect: Dialect
    #: The request headers, lower-cased names.
    headers: Mapping[str, str]
    body: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    stream: bool = False
    principal: Principal | None = None
    group: ModelGroup | None = None
    deployment: Deployment | None = None
    usage: Usage | None = None
    status: int = 0
    error_type: str | None = None
    started: float = field(default_factory=time.perf_counter)
    first_byte: float | None = None
    finished: float | None = None
    #: Whether ``deployment`` is still counted as in use by this request (freed when the call ends).
    holding: bool = False
    #: Calls made to upstream deployments for this request (retries and fallbacks included).
    attempts: int = 0
    #: The cost in USD of the call that served the request, from the price table; None when the
    #: deployment's price is unknown or nothing was used.
    cost: Decimal | None = None
    #: False when the served deployment has no known price (its cost is unknown, not zero).
    price_known: bool = True
    #: The most output tokens the policies admitted (the least any of them reserved), or None: a stream
    #: is ended there with finish reason ``length`` (see :mod:`gateway_core.stream_cap`).
    output_cap: int | None = None
    #: Extra headers for the client's answer (success or error), e.g. ``x-ratelimit-*`` set by policies.
    response_headers: dict[str, str] = field(default_factory=dict)
    #: What the DLP filters found: counts by (entity type, direction, action), the values never kept.
    #: None when no filter ran. A filter that failed under ``on_error: allow`` counts as type ``error``.
    dlp_findings: dict[tuple[str, str, str], int] | None = None
    #: The request's spans when tracing is on (:class:`gateway_core.tracing.RequestTrace`), else None.
    trace: RequestTrace | None = None
    #: Free space for plugins, keyed by plugin name.
    state: dict[str, Any] = field(default_factory=dict)
