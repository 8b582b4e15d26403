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
runs only the failing filters. Each test module starts its own fakes and gateways, once: the fixtures
``dlp_upstreams``, ``dlp_recorder``, ``dlp_gateway`` and ``dlp_failing_gateway`` (registered in
``tests/conftest.py``); each test uses ``dlp_test``, which resets them and checks the logs.

The tests talk to the gateways through a :class:`Client` per SDK (:class:`OpenAIClient`,
:class:`AnthropicClient`): it asks in the SDK's request shape, puts the answer into an
:class:`Answer` and reads the SDK's errors into an :class:`ApiError`, so that
:mod:`tests.test_dlp_clients` states each guarantee once for both.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import anthropic
import httpx
import openai
import pytest
from anthropic.types import Message, MessageParam, ToolParam
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam, ChatCompletionToolParam

from gateway_core import DlpFilter, Finding, RequestContext, hookimpl
from gateway_core.testing import DEFAULT_TEST_KEY, GatewayServer
from tests.chat_completions import function_calls, user
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
    """What a client got: the text, the tool calls ``(name, input)``, and how many pieces carried them
    (a stream's chunks; an answer sent whole: its choices or content blocks)."""

    text: str
    calls: list[tuple[str, Any]] = field(default_factory=list)
    pieces: int = 1


def assert_no_raw_value(data: bytes | str, values: Iterable[str] = RAW_VALUES) -> None:
    text = data.decode() if isinstance(data, bytes) else data
    leaked = [value for value in values if value in text]
    assert not leaked, f"raw values leaked: {leaked}"


#: A field that differs between two answers of one fake: ids and timestamps.
_VARIABLE = re.compile(rb'"(id|created)":("[^"]*"|\d+)')


def without_ids(body: bytes) -> bytes:
    return _VARIABLE.sub(lambda m: b'"' + m.group(1) + b'":"*"', body)


def findings(counts: dict[str, int], direction: str, action: str) -> dict[tuple[str, str, str], int]:
    """The findings ``(type, direction, action) -> count`` of ``counts`` by type."""
    return {(entity_type, direction, action): count for entity_type, count in counts.items()}


# --- the clients: one adapter per SDK -------------------------------------------------------------------

#: The tools of the tests, by name: their JSON schemas (each SDK wraps them its own way).
TOOL_SCHEMAS: dict[str, dict[str, Any]] = {
    "send_mail": {"type": "object", "properties": {"to": {"type": "string"}}, "required": ["to"]},
    "lookup_key": {"type": "object", "properties": {}},
}
#: The upstreams by name, as the fixture ``dlp_upstreams`` serves them.
Upstreams = dict[str, Upstream]


@dataclass
class ApiError:
    """An error as a client reads it: the HTTP status the SDK reports (for an error event that ends a
    stream, ``None`` from OpenAI's, 200 from Anthropic's), the error's kind (OpenAI's ``code``,
    Anthropic's ``error.type``) and message, and the text of the error response (empty for an error
    event)."""

    status: int | None
    kind: str | None
    message: str
    response: str


class StreamedAnswer:
    """An :class:`Answer` put together from a stream's pieces; its texts go to ``texts`` as they come."""

    def __init__(self, texts: list[str] | None) -> None:
        self.texts: list[str] = [] if texts is None else texts
        self.names: dict[int, str] = {}
        self.arguments: dict[int, str] = {}
        self.pieces = 0

    def text(self, piece: str) -> None:
        self.texts.append(piece)
        self.pieces += 1

    def call(self, index: int, name: str) -> None:
        self.names[index] = name

    def call_arguments(self, index: int, piece: str) -> None:
        self.arguments[index] = self.arguments.get(index, "") + piece
        self.pieces += bool(piece)

    def answer(self) -> Answer:
        calls = [(self.names[i], json.loads(self.arguments.get(i) or "{}")) for i in sorted(self.names)]
        return Answer("".join(self.texts), calls, self.pieces)


class Client(abc.ABC):
    """A client SDK in front of a gateway, with one key: what the tests do with it, and how it reports
    errors. :attr:`sdk` is the SDK's own client."""

    name: ClassVar[str]
    #: What the SDK raises for a refused request (400), for a DLP filter that could not check (503),
    #: and for any error, the error event of a stream included.
    bad_request: ClassVar[type[openai.APIStatusError | anthropic.APIStatusError]]
    unavailable: ClassVar[type[openai.APIStatusError | anthropic.APIStatusError]]
    any_error: ClassVar[type[openai.APIError | anthropic.APIError]]
    #: The kinds of error (:attr:`ApiError.kind`) of a blocked request and of a failing filter.
    blocked_kind: ClassVar[str]
    unavailable_kind: ClassVar[str]
    #: Whether the last message of :meth:`conversation` is plain text (the fakes echo it), not tool
    #: results.
    conversation_ends_in_text: ClassVar[bool]
    #: What a request of :meth:`conversation` carries besides its messages.
    conversation_extra: ClassVar[dict[str, Any]] = {}
    sdk: openai.OpenAI | anthropic.Anthropic

    def __init__(self, server: GatewayServer, key: str = DEFAULT_TEST_KEY) -> None:
        self.server = server
        self.key = key

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sdk.close()

    def ask(
        self,
        model: str,
        text: str,
        stream: bool,
        *,
        tools: Sequence[str] = (),
        received: list[str] | None = None,
    ) -> Answer:
        """The answer to one user message ``text``, offering the ``tools`` of :data:`TOOL_SCHEMAS`
        named; a stream's text pieces also go to ``received`` as they come."""
        return self._send(model, [{"role": "user", "content": text}], stream, tools, received)

    def ask_conversation(self, model: str, stream: bool) -> Answer:
        """The answer to :meth:`conversation`, offering the tools ``send_mail`` and ``lookup_key``."""
        return self._send(
            model, self.conversation(), stream, ["send_mail", "lookup_key"], **self.conversation_extra
        )

    def _send(
        self,
        model: str,
        messages: list[Any],
        stream: bool,
        tools: Sequence[str],
        received: list[str] | None = None,
        **extra: Any,
    ) -> Answer:
        if tools:
            extra["tools"] = self.tools(tools)
        if stream:
            return self.stream(model, messages, extra, StreamedAnswer(received))
        return self.whole(model, messages, extra)

    @staticmethod
    @abc.abstractmethod
    def conversation() -> list[Any]:
        """A conversation with a value in each place a request of this SDK carries text (see
        :data:`RAW_VALUES`), with :attr:`conversation_extra`."""

    @staticmethod
    @abc.abstractmethod
    def tools(names: Sequence[str]) -> list[Any]:
        """The tools of :data:`TOOL_SCHEMAS` ``names``, as this SDK sends them."""

    @abc.abstractmethod
    def whole(self, model: str, messages: list[Any], extra: dict[str, Any]) -> Answer:
        """The answer, not streamed."""

    @abc.abstractmethod
    def stream(self, model: str, messages: list[Any], extra: dict[str, Any], into: StreamedAnswer) -> Answer:
        """The answer, streamed ``into``."""

    @abc.abstractmethod
    def ask_with_request_id(self, model: str, text: str) -> tuple[Answer, str]:
        """The answer to ``text`` (not streamed), and the gateway's ``x-request-id`` of it."""

    @abc.abstractmethod
    def post(self, model: str, text: str, stream: bool, key: str | None = None) -> bytes:
        """The bytes of the gateway's answer to ``text`` (200 expected), read by plain HTTP with this
        client's key or ``key``."""

    @abc.abstractmethod
    def error(self, error: BaseException) -> ApiError:
        """What ``error``, raised by the SDK, says."""

    def _post(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> bytes:
        with (
            httpx.Client(timeout=10) as http,
            http.stream("POST", f"{self.server.url}{path}", json=body, headers=headers) as response,
        ):
            assert response.status_code == 200
            return response.read()


class OpenAIClient(Client):
    """The ``openai`` SDK on ``/v1/chat/completions``."""

    name = "openai-sdk"
    bad_request = openai.BadRequestError
    unavailable = openai.InternalServerError
    any_error = openai.APIError
    blocked_kind = "dlp_blocked"
    unavailable_kind = "dlp_unavailable"
    conversation_ends_in_text = True

    def __init__(self, server: GatewayServer, key: str = DEFAULT_TEST_KEY) -> None:
        super().__init__(server, key)
        self.sdk: openai.OpenAI = openai.OpenAI(
            base_url=server.base_url, api_key=key, max_retries=0, timeout=10
        )

    @staticmethod
    def conversation() -> list[ChatCompletionMessageParam]:
        """A value in each place of a chat request: the system prompt, the user's text as content
        parts and as a string, tool-call arguments, a tool result as a string and as content parts."""
        return [
            {"role": "system", "content": f"You assist {SYSTEM_VALUE}."},
            {"role": "user", "content": [{"type": "text", "text": f"Mail {PART_VALUE} the report."}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "send_mail", "arguments": json.dumps({"to": ARGUMENT_VALUE})},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "lookup_key", "arguments": "{}"},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": f"Sent, and copied to {RESULT_VALUE}."},
            {
                "role": "tool",
                "tool_call_id": "call_2",
                "content": [{"type": "text", "text": f"The key: {KEY_VALUE}"}],
            },
            {"role": "user", "content": f"Now tell {LAST_VALUE}."},
        ]

    @staticmethod
    def tools(names: Sequence[str]) -> list[ChatCompletionToolParam]:
        return [{"type": "function", "function": {"name": n, "parameters": TOOL_SCHEMAS[n]}} for n in names]

    def whole(self, model: str, messages: list[Any], extra: dict[str, Any]) -> Answer:
        return self._answer(self.sdk.chat.completions.create(model=model, messages=messages, **extra))

    def stream(self, model: str, messages: list[Any], extra: dict[str, Any], into: StreamedAnswer) -> Answer:
        for chunk in self.sdk.chat.completions.create(model=model, messages=messages, stream=True, **extra):
            for choice in chunk.choices:
                if choice.delta.content:
                    into.text(choice.delta.content)
                for call in choice.delta.tool_calls or []:
                    if call.function is not None and call.function.name:
                        into.call(call.index, call.function.name)
                    if call.function is not None and call.function.arguments:
                        into.call_arguments(call.index, call.function.arguments)
        return into.answer()

    @staticmethod
    def _answer(completion: ChatCompletion) -> Answer:
        message = completion.choices[0].message
        calls = [(c.function.name, json.loads(c.function.arguments)) for c in function_calls(message)]
        return Answer(message.content or "", calls, len(completion.choices))

    def ask_with_request_id(self, model: str, text: str) -> tuple[Answer, str]:
        raw = self.sdk.chat.completions.with_raw_response.create(model=model, messages=user(text))
        return self._answer(raw.parse()), raw.headers["x-request-id"]

    def post(self, model: str, text: str, stream: bool, key: str | None = None) -> bytes:
        body = {"model": model, "messages": user(text), "stream": stream}
        return self._post("/v1/chat/completions", {"authorization": f"Bearer {key or self.key}"}, body)

    def error(self, error: BaseException) -> ApiError:
        assert isinstance(error, openai.APIError) and isinstance(error.body, dict), error
        message = error.body["message"]
        assert error.message.endswith(message)  # the SDK's own message ("Error code: 400 - ...") ends so
        if isinstance(error, openai.APIStatusError):
            return ApiError(error.status_code, error.code, message, error.response.text)
        return ApiError(None, error.code, message, "")


class AnthropicClient(Client):
    """The ``anthropic`` SDK on ``/v1/messages``: to the Anthropic upstream a request is forwarded as
    it is (once filtered), to the others translated."""

    name = "anthropic-sdk"
    bad_request = anthropic.BadRequestError
    unavailable = anthropic.InternalServerError
    any_error = anthropic.APIStatusError
    blocked_kind = "invalid_request_error"
    unavailable_kind = "api_error"
    conversation_ends_in_text = False
    #: The system prompt of :meth:`conversation`, as blocks.
    conversation_extra: ClassVar[dict[str, Any]] = {
        "system": [{"type": "text", "text": f"You assist {SYSTEM_VALUE}."}]
    }

    def __init__(self, server: GatewayServer, key: str = DEFAULT_TEST_KEY) -> None:
        super().__init__(server, key)
        self.sdk: anthropic.Anthropic = anthropic.Anthropic(
            base_url=server.url, api_key=key, max_retries=0, timeout=10
        )

    @staticmethod
    def conversation() -> list[MessageParam]:
        """A value in each place of a Messages request (with the system prompt as blocks): the user's
        text as a string and as blocks, ``tool_use`` input, ``tool_result`` content as a string and as
        blocks."""
        return [
            {"role": "user", "content": f"Mail {PART_VALUE} the report."},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Sending."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "send_mail",
                        "input": {"to": ARGUMENT_VALUE},
                    },
                    {"type": "tool_use", "id": "toolu_2", "name": "lookup_key", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": f"Sent, and copied to {RESULT_VALUE}.",
                    },
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [{"type": "text", "text": f"The key: {KEY_VALUE}"}],
                    },
                    {"type": "text", "text": f"Now tell {LAST_VALUE}."},
                ],
            },
        ]

    @staticmethod
    def tools(names: Sequence[str]) -> list[ToolParam]:
        return [{"name": name, "input_schema": TOOL_SCHEMAS[name]} for name in names]

    def whole(self, model: str, messages: list[Any], extra: dict[str, Any]) -> Answer:
        return self._answer(
            self.sdk.messages.create(model=model, max_tokens=1000, messages=messages, **extra)
        )

    def stream(self, model: str, messages: list[Any], extra: dict[str, Any], into: StreamedAnswer) -> Answer:
        create = self.sdk.messages.create
        with create(model=model, max_tokens=1000, messages=messages, stream=True, **extra) as events:
            for event in events:
                if event.type == "content_block_start" and event.content_block.type == "tool_use":
                    into.call(event.index, event.content_block.name)
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    into.text(event.delta.text)
                elif event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                    into.call_arguments(event.index, event.delta.partial_json)
        return into.answer()

    @staticmethod
    def _answer(message: Message) -> Answer:
        text = "".join(block.text for block in message.content if block.type == "text")
        calls = [(block.name, block.input) for block in message.content if block.type == "tool_use"]
        return Answer(text, calls, len(message.content))

    def ask_with_request_id(self, model: str, text: str) -> tuple[Answer, str]:
        raw = self.sdk.messages.with_raw_response.create(
            model=model, max_tokens=100, messages=[{"role": "user", "content": text}]
        )
        return self._answer(raw.parse()), raw.headers["x-request-id"]

    def post(self, model: str, text: str, stream: bool, key: str | None = None) -> bytes:
        messages = [{"role": "user", "content": text}]
        body = {"model": model, "max_tokens": 100, "messages": messages, "stream": stream}
        return self._post(
            "/v1/messages", {"x-api-key": key or self.key, "anthropic-version": "2023-06-01"}, body
        )

    def error(self, error: BaseException) -> ApiError:
        assert isinstance(error, anthropic.APIStatusError) and isinstance(error.body, dict), error
        response = "" if error.status_code == 200 else error.response.text
        return ApiError(
            error.status_code, error.body["error"]["type"], error.body["error"]["message"], response
        )


#: The clients of the tests every SDK runs.
CLIENTS: tuple[type[Client], ...] = (OpenAIClient, AnthropicClient)


# --- fixtures (registered for every test module by tests/conftest.py) -------------------------------------


@pytest.fixture(scope="module")
def dlp_upstreams() -> Iterator[dict[str, Upstream]]:
    """The fakes of every upstream (once per test module)."""
    with serve_upstreams() as fakes:
        yield fakes


@pytest.fixture(scope="module")
def dlp_recorder() -> FindingsRecorder:
    return FindingsRecorder()


@pytest.fixture(scope="module")
def dlp_gateway(
    dlp_upstreams: dict[str, Upstream], dlp_recorder: FindingsRecorder
) -> Iterator[GatewayServer]:
    """The main gateway (:func:`main_config`)."""
    with serve_gateway(main_config(dlp_upstreams), dlp_recorder) as server:
        yield server


@pytest.fixture(scope="module")
def dlp_failing_gateway(
    dlp_upstreams: dict[str, Upstream], dlp_recorder: FindingsRecorder
) -> Iterator[GatewayServer]:
    """The gateway of failing filters (:func:`failing_config`)."""
    with serve_gateway(failing_config(dlp_upstreams), dlp_recorder) as server:
        yield server


@pytest.fixture
def dlp_test(
    dlp_upstreams: dict[str, Upstream], dlp_recorder: FindingsRecorder, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """Every DLP test (``pytestmark = pytest.mark.usefixtures("dlp_test")``): the fakes forget and the
    recorder is empty at its start; the gateway logs at DEBUG, and no raw value is ever in its logs."""
    reset(dlp_upstreams)
    dlp_recorder.clear()
    caplog.set_level("DEBUG", logger="lockgate")
    caplog.set_level("DEBUG", logger="hypercorn")
    yield
    # caplog.text holds only the current phase (teardown): read the test's own records.
    records = [*caplog.get_records("setup"), *caplog.get_records("call")]
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    assert_no_raw_value("\n".join(formatter.format(record) for record in records))
