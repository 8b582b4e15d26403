"""What the DLP end-to-end tests share: a test filter, fake upstreams of every dialect and gateways.

A real pattern filter is a plugin of its own; these tests register :class:`SecretsFilter`, a small
deterministic one finding e-mail addresses and AWS access key ids, and filters that fail
(:class:`CrashingFilter`, :class:`SluggishFilter`, :class:`StallingFilter`).

The main gateway (:func:`main_config`) serves one model group per upstream and policy, named
``<upstream>-<policy>`` (``openai-redact``, ``gemini-pseudo``, ...): the policies are the gateway's
default (``redact``, no override) and the ``dlp.models`` overrides of :data:`POLICIES`. Its keys: the
test key (no organization), ``ACME_KEY`` of the organization ``acme`` (which blocks AWS keys),
``ACME_PSEUDO_KEY`` of ``acme`` with its own override, and ``RELAXED_KEY`` of the organization
``relaxed`` (DLP off). The failing gateway (:func:`failing_config`)
runs only the failing filters. Each test module starts its own fakes and gateways, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway_core import DlpFilter, Finding, RequestContext, hookimpl
from gateway_core.testing import DEFAULT_TEST_KEY, GatewayServer
from tests.fakes import FakeOpenAI
from tests.fakes.anthropic_upstream import FakeAnthropic, Reply, text_block, tool_use_block
from tests.fakes.azure_upstream import FakeAzureOpenAI
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.gemini_upstream import Reply as GeminiReply
from tests.one_call import one_call
from tests.waiting import eventually

# --- the values, each in its own place of a request ----------------------------------------------------

SYSTEM_VALUE = "root@example.com"
PART_VALUE = "alice@example.com"
ARGUMENT_VALUE = "carol@example.com"
RESULT_VALUE = "bob@example.com"
KEY_VALUE = "AKIAIOSFODNN7EXAMPLE"
LAST_VALUE = "dave@example.com"
#: A value an upstream writes in its answer by itself.
MODEL_VALUE = "zed@example.com"
#: Every sensitive value of the tests; none may reach an upstream (where DLP applies) or a log.
RAW_VALUES = (SYSTEM_VALUE, PART_VALUE, ARGUMENT_VALUE, RESULT_VALUE, KEY_VALUE, LAST_VALUE, MODEL_VALUE)
#: Findings in the ``conversation()`` of each test module: a value in each place of a request.
CONVERSATION_FINDINGS = {"EMAIL_ADDRESS": 5, "AWS_ACCESS_KEY": 1}
#: One character per streamed chunk (the fakes split a text into at most this many pieces).
ONE_CHAR = 100_000
#: An answer the upstream writes itself, holding a value.
ANSWER = f"Write to {PART_VALUE} today."
#: How the upstream sends its answer: the text, the pieces a stream splits it into, streamed or not.
#: Split in two, the value arrives as ``"alice@exa"`` + ``"mple.com"``.
DELIVERIES = {
    "whole": (ANSWER, 1, False),
    "one-char-chunks": (ANSWER, ONE_CHAR, True),
    "split-value": (PART_VALUE, 2, True),
}


# --- filters ---------------------------------------------------------------------------------------------


class SecretsFilter(DlpFilter):
    """E-mail addresses and AWS access key ids, by regular expression."""

    name = "test_secrets"
    entity_types = frozenset({"EMAIL_ADDRESS", "AWS_ACCESS_KEY"})
    patterns = {
        "EMAIL_ADDRESS": re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
        "AWS_ACCESS_KEY": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    }

    def find(self, text: str, entity_types: frozenset[str]) -> Iterable[Finding]:
        for entity_type in sorted(entity_types):
            for match in self.patterns[entity_type].finditer(text):
                yield Finding(entity_type, match.start(), match.end())


class CrashingFilter(DlpFilter):
    """Raises on every text, quoting it (which must not reach the log)."""

    name = "crashing"
    entity_types = frozenset({"EMAIL_ADDRESS"})

    def find(self, text: str, entity_types: frozenset[str]) -> Iterable[Finding]:
        raise RuntimeError(f"the detector crashed on {text!r}")


#: Set at the end of the tests, so abandoned threads of :class:`SluggishFilter` end at once.
RELEASE_SLUGGISH = threading.Event()


class SluggishFilter(DlpFilter):
    """Detection in a worker thread that takes far longer than ``dlp.timeout``."""

    name = "sluggish"
    entity_types = frozenset({"EMAIL_ADDRESS"})
    threaded = True

    def find(self, text: str, entity_types: frozenset[str]) -> Iterable[Finding]:
        RELEASE_SLUGGISH.wait(5)
        return []


class StallingFilter(DlpFilter):
    """Detection that awaits (a remote service) and never answers in time."""

    name = "stalling"
    entity_types = frozenset({"EMAIL_ADDRESS"})

    async def find_async(self, text: str, entity_types: frozenset[str]) -> list[Finding]:
        await asyncio.sleep(30)
        return []


class FindingsRecorder:
    """A policy plugin that keeps the DLP findings of each request as it settles (it also registers
    the filters)."""

    def __init__(self) -> None:
        self.started = 0
        self.findings: list[dict[tuple[str, str, str], int] | None] = []

    @hookimpl
    def lockgate_register_dlp_filters(self, register: Any) -> None:
        for cls in (SecretsFilter, CrashingFilter, SluggishFilter, StallingFilter):
            register(cls.name, cls)

    @hookimpl
    def lockgate_policy_check(self, ctx: RequestContext) -> None:
        self.started += 1

    @hookimpl
    def lockgate_policy_settle(self, ctx: RequestContext) -> None:
        self.findings.append(None if ctx.dlp_findings is None else dict(ctx.dlp_findings))

    def settled(self) -> list[dict[tuple[str, str, str], int] | None]:
        """The findings of every request so far, once each has settled (a stream settles just after
        its client read the end)."""
        eventually(lambda: len(self.findings) == self.started, what="every request settled")
        return self.findings

    def clear(self) -> None:
        self.settled()
        self.started = 0
        self.findings.clear()

    def last(self) -> dict[tuple[str, str, str], int] | None:
        """The findings of the one request since :meth:`clear`."""
        (one,) = self.settled()
        return one


# --- fake upstreams -------------------------------------------------------------------------------------

UPSTREAMS = ("openai", "azure", "openrouter", "anthropic", "gemini")
#: Policy name -> its ``dlp.models`` override (None: the gateway's default, redact in requests).
POLICIES: dict[str, dict[str, Any] | None] = {
    "redact": None,
    "block": {"entities": {"*": "block"}},
    "pseudo": {"entities": {"*": "pseudonymize"}},
    "pseudo-both": {"direction": "both", "entities": {"*": "pseudonymize"}},
    "answers": {"direction": "response"},
    "answers-block": {"direction": "response", "entities": {"*": "block"}},
    "log": {"direction": "both", "entities": {"*": "log"}},
}
ACME_KEY = "lg-dlp-acme-key-0123456789abcdef"
#: A key of ``acme`` whose own override pseudonymizes the AWS keys its organization blocks.
ACME_PSEUDO_KEY = "lg-dlp-acme-pseudo-key-0123456789abcdef"
RELAXED_KEY = "lg-dlp-relaxed-key-0123456789abcdef"


@dataclass
class Upstream:
    """One upstream of the main gateway: its fake, and how to script the fake's answer."""

    name: str
    fake: FakeOpenAI | FakeAzureOpenAI | FakeAnthropic | FakeGemini

    def bodies(self) -> list[bytes]:
        """The bodies of the model calls the fake received."""
        return [r.body for r in self.fake.requests if r.method == "POST"]

    def body(self) -> bytes:
        """The body of the one model call the fake received."""
        (body,) = self.bodies()
        return body

    def stream_in(self, chunks: int) -> None:
        """Echo as usual, streaming texts in ``chunks`` pieces."""
        self.fake.behave(chunks=chunks)

    def answer(self, text: str, chunks: int = 3) -> None:
        """Answer the next request with ``text`` (streamed in ``chunks`` pieces)."""
        fake = self.fake
        if isinstance(fake, (FakeOpenAI, FakeAzureOpenAI)):
            fake.behave(reply=text, chunks=chunks)
        elif isinstance(fake, FakeAnthropic):
            fake.behave(chunks=chunks)
            fake.enqueue(Reply([text_block(text)]))
        else:
            fake.behave(chunks=chunks)
            fake.script(GeminiReply(text=text))

    def call_tool(self, name: str, arguments: dict[str, Any], chunks: int = 3) -> None:
        """Answer the next request with a call of the tool ``name`` (not on Azure); streamed, its
        arguments come in ``chunks`` pieces (Gemini sends a call whole)."""
        fake = self.fake
        if isinstance(fake, FakeOpenAI):
            fake.behave(tool_calls=[(name, json.dumps(arguments))], chunks=chunks)
        elif isinstance(fake, FakeAnthropic):
            fake.behave(chunks=chunks)
            fake.enqueue(Reply([tool_use_block(name, arguments)], stop_reason="tool_use"))
        elif isinstance(fake, FakeGemini):
            fake.script(GeminiReply(function_calls=[(name, arguments)]))
        else:
            raise NotImplementedError(self.name)


@contextlib.contextmanager
def serve_upstreams() -> Iterator[dict[str, Upstream]]:
    """The fakes of every upstream, by the names of :data:`UPSTREAMS` (OpenRouter shares the OpenAI fake)."""
    with (
        FakeOpenAI() as openai,
        FakeAzureOpenAI() as azure,
        FakeAnthropic() as claude,
        FakeGemini() as gemini,
    ):
        yield {
            "openai": Upstream("openai", openai),
            "azure": Upstream("azure", azure),
            "openrouter": Upstream("openrouter", openai),
            "anthropic": Upstream("anthropic", claude),
            "gemini": Upstream("gemini", gemini),
        }


def reset(upstreams: dict[str, Upstream]) -> None:
    for upstream in upstreams.values():
        upstream.fake.reset()


def deployment(upstream: Upstream) -> dict[str, Any]:
    fake = upstream.fake
    if upstream.name == "azure":
        return {
            "provider": "azure_openai",
            "base_url": fake.url,
            "api_key": fake.api_key,
            "model": "chat-4o",
            "options": {"api_version": "2024-10-21"},
        }
    if isinstance(fake, FakeOpenAI):
        return {
            "provider": upstream.name,
            "base_url": fake.base_url,
            "api_key": fake.api_key,
            "model": "gpt-4o-mini",
        }
    if isinstance(fake, FakeAnthropic):
        return {
            "provider": "anthropic",
            "base_url": fake.url,
            "api_key": fake.api_key,
            "model": "claude-sonnet-4-5",
        }
    return {"provider": "gemini", "base_url": fake.url, "api_key": fake.api_key, "model": "gemini-2.5-flash"}


def main_config(upstreams: dict[str, Upstream]) -> dict[str, Any]:
    """The main gateway: ``<upstream>-<policy>`` model groups, embeddings, organizations, keys."""
    models: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    for name, upstream in upstreams.items():
        for policy, override in POLICIES.items():
            models[f"{name}-{policy}"] = {"deployments": [deployment(upstream)]}
            if override is not None:
                overrides[f"{name}-{policy}"] = override
    embeddings = {
        "openai": {**deployment(upstreams["openai"]), "model": "text-embedding-3-small"},
        "azure": {**deployment(upstreams["azure"]), "model": "embed-small"},
    }
    for name, entry in embeddings.items():
        models[f"{name}-embed-redact"] = {"deployments": [entry]}
        models[f"{name}-embed-block"] = {"deployments": [entry]}
        overrides[f"{name}-embed-block"] = POLICIES["block"]
    return one_call(
        {
            "models": models,
            "dlp": {
                "filters": {"test_secrets": {}},
                "models": overrides,
                "organizations": {
                    "acme": {"entities": {"AWS_ACCESS_KEY": "block"}},
                    "relaxed": {"enabled": False},
                },
            },
            "plugins": {
                "config_keys": {
                    "keys": [
                        {"name": "test", "key": DEFAULT_TEST_KEY},
                        {"name": "acme", "key": ACME_KEY, "org": "acme"},
                        {
                            "name": "acme-pseudo",
                            "key": ACME_PSEUDO_KEY,
                            "org": "acme",
                            "dlp": {"entities": {"AWS_ACCESS_KEY": "pseudonymize"}},
                        },
                        {"name": "relaxed", "key": RELAXED_KEY, "org": "relaxed"},
                    ]
                }
            },
        }
    )


#: The failing gateway's model groups: failure -> the policy override that makes it happen.
FAILURES: dict[str, dict[str, Any]] = {
    "crash": {"filters": ["crashing"]},
    "thread-timeout": {"filters": ["sluggish"]},
    "async-timeout": {"filters": ["stalling"]},
    "crash-allow": {"filters": ["crashing"], "on_error": "allow"},
    "crash-on-answers": {"filters": ["crashing"], "direction": "response"},
}


def failing_config(upstreams: dict[str, Upstream]) -> dict[str, Any]:
    """The failing gateway: ``<upstream>-<failure>`` groups on the OpenAI and Anthropic upstreams."""
    models: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    for name in ("openai", "anthropic"):
        for failure, override in FAILURES.items():
            models[f"{name}-{failure}"] = {"deployments": [deployment(upstreams[name])]}
            overrides[f"{name}-{failure}"] = override
    return one_call(
        {
            "models": models,
            "dlp": {
                "filters": {"crashing": {}, "sluggish": {}, "stalling": {}},
                "timeout": 0.1,
                "models": overrides,
            },
        }
    )


@contextlib.contextmanager
def serve_gateway(config: dict[str, Any], recorder: FindingsRecorder) -> Iterator[GatewayServer]:
    RELEASE_SLUGGISH.clear()
    with GatewayServer(config, extra_plugins=[("dlp_end_to_end", recorder)]) as server:
        try:
            yield server
        finally:
            RELEASE_SLUGGISH.set()  # the threads the gateway abandoned end before it stops


# --- what the tests check -------------------------------------------------------------------------------


@dataclass
class Answer:
    """What a client got: the text, the tool calls ``(name, input)``, and how many chunks carried them."""

    text: str
    calls: list[tuple[str, Any]] = field(default_factory=list)
    pieces: int = 1


def assert_no_raw_value(data: bytes | str, values: Iterable[str] = RAW_VALUES) -> None:
    text = data.decode() if isinstance(data, bytes) else data
    leaked = [value for value in values if value in text]
    assert not leaked, f"raw values leaked: {leaked}"


def check_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The body of each module's autouse fixture: the gateway logs at DEBUG, and no raw value is
    ever in the logs of a test."""
    caplog.set_level("DEBUG", logger="lockgate")
    caplog.set_level("DEBUG", logger="hypercorn")
    yield
    # caplog.text holds only the current phase (teardown): read the test's own records.
    records = [*caplog.get_records("setup"), *caplog.get_records("call")]
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    assert_no_raw_value("\n".join(formatter.format(record) for record in records))


#: A field that differs between two answers of one fake: ids and timestamps.
_VARIABLE = re.compile(rb'"(id|created)":("[^"]*"|\d+)')


def without_ids(body: bytes) -> bytes:
    return _VARIABLE.sub(lambda m: b'"' + m.group(1) + b'":"*"', body)


def findings(counts: dict[str, int], direction: str, action: str) -> dict[tuple[str, str, str], int]:
    """The findings ``(type, direction, action) -> count`` of ``counts`` by type."""
    return {(entity_type, direction, action): count for entity_type, count in counts.items()}
