"""The DLP engine: its configuration checks, the policy of each request, the request's texts in every
dialect, the actions, and failing closed."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from gateway_core import ConfigError, Gateway, GatewayError, Principal
from gateway_core.dlp.engine import Dlp
from gateway_core.dlp.policy import DlpConfig
from gateway_core.providers import CompletedResponse
from tests.gateway_core.dlp.helpers import context, registry, session, started

VALUE = "alice@example.com"


# --- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"filters": {"nope": {}}}, "unknown DLP filter 'nope'"),
        ({"filters": {"emails": {"x": 1}}}, "dlp.filters.emails"),
        ({"entities": {"PERSON": "redact"}}, "no configured filter finds PERSON"),
        ({"models": {"gpt": {"entities": {"PERSON": "block"}}}}, "dlp.models.gpt.entities"),
        ({"entities": {"EMAIL_ADDRESS": "hash"}}, "the hash action needs a key"),
        ({"organizations": {"acme": {"filters": ["presidio"]}}}, "filters not configured"),
        (
            {"filters": {"needs_model": {}}},
            r"^<test>: dlp.filters.needs_model: the model 'people-v1' is not installed: pip install people-v1$",
        ),
    ],
)
async def test_mistakes_stop_start_up(section: dict[str, Any], message: str) -> None:
    section = {"filters": {"emails": {}}, **section}
    with pytest.raises(ConfigError, match=message):
        await Dlp(DlpConfig.model_validate(section), registry(), source="<test>", secrets_key=None).start()


def test_an_unknown_action_is_refused() -> None:
    with pytest.raises(ValueError, match="redact"):
        DlpConfig.model_validate({"filters": {"emails": {}}, "entities": {"EMAIL_ADDRESS": "shred"}})


# --- the policy of a request ----------------------------------------------------------------------


def principal(metadata: dict[str, Any] | None = None, org_id: str | None = None) -> Principal:
    return Principal(key_id="key-1", org_id=org_id, metadata=metadata or {})


async def actions(section: dict[str, Any], **context_args: Any) -> dict[str, Any] | None:
    dlp = await started(section)
    found = dlp.session(context(**context_args))
    if found is None:
        return None
    policy = found.policy
    return {
        "default": policy.default,
        **policy.actions,
        "direction": "request" if not policy.response else "both",
    }


async def test_the_gateway_default_redacts_every_type() -> None:
    assert await actions({}) == {"default": "redact", "direction": "request"}


async def test_a_model_group_overrides_the_default() -> None:
    section = {"models": {"gpt": {"entities": {"EMAIL_ADDRESS": "block"}, "direction": "both"}}}
    assert await actions(section, model="gpt") == {
        "default": "redact",
        "EMAIL_ADDRESS": "block",
        "direction": "both",
    }
    assert await actions(section, model="other") == {"default": "redact", "direction": "request"}


async def test_organizations_then_the_key_override_in_that_order() -> None:
    section = {
        "models": {"gpt": {"entities": {"EMAIL_ADDRESS": "block"}}},
        "organizations": {"acme": {"entities": {"EMAIL_ADDRESS": "mask", "SECRET": "block"}}},
    }
    metadata = {
        "org_name": "acme",
        "org_ancestors": [{"id": "parent", "name": "holding", "dlp": {"entities": {"SECRET": "log"}}}],
        "org_dlp": {"entities": {"SECRET": "redact"}},
        "dlp": {"entities": {"EMAIL_ADDRESS": "pseudonymize"}},
    }
    got = await actions(section, principal=principal(metadata, "org-1"), model="gpt")
    assert got == {
        "default": "redact",
        "EMAIL_ADDRESS": "pseudonymize",
        "SECRET": "redact",
        "direction": "request",
    }
    del metadata["dlp"], metadata["org_dlp"]
    got = await actions(section, principal=principal(metadata, "org-1"), model="gpt")
    assert got == {"default": "redact", "EMAIL_ADDRESS": "mask", "SECRET": "block", "direction": "request"}


async def test_an_organization_may_turn_dlp_off() -> None:
    section = {"organizations": {"org-1": {"enabled": False}}}
    assert await actions(section, principal=principal(org_id="org-1")) is None
    assert await actions(section, principal=principal(org_id="org-2")) is not None


async def test_an_unreadable_override_refuses_the_request() -> None:
    dlp = await started({})
    ctx = context(principal=principal({"dlp": {"entities": {"EMAIL_ADDRESS": "shred"}}}))
    with pytest.raises(GatewayError) as raised:
        dlp.session(ctx)
    assert (raised.value.status, raised.value.code) == (503, "dlp_unavailable")


# --- the texts of a request -----------------------------------------------------------------------


async def test_every_text_of_an_openai_chat_request() -> None:
    dlp = await session({})
    escaped = orjson.dumps({"to": VALUE}).decode().replace("@", "\\u0040")
    body: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": f"admin is {VALUE}"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"write {VALUE}"},
                    {"type": "image_url", "image_url": {"url": "https://x/a.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "send", "arguments": escaped}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": f"sent to {VALUE}"},
            {
                "role": "assistant",
                "content": "ok",
                "tool_calls": [
                    {
                        "id": "c2",
                        "type": "function",
                        "function": {"name": "x", "arguments": f"not json {VALUE}"},
                    }
                ],
            },
        ],
        "user": VALUE,
    }
    assert await dlp.filter_request("openai", "chat", body) is True
    raw = orjson.dumps(body)
    assert b"alice" not in raw and b"\\u0040" not in raw
    assert orjson.loads(body["messages"][2]["tool_calls"][0]["function"]["arguments"]) == {
        "to": "[EMAIL_ADDRESS]"
    }
    assert body["messages"][1]["content"][1] == {"type": "image_url", "image_url": {"url": "https://x/a.png"}}
    assert dlp.ctx.dlp_findings == {("EMAIL_ADDRESS", "request", "redact"): 6}


async def test_every_text_of_an_anthropic_messages_request() -> None:
    dlp = await session({}, dialect="anthropic")
    body: dict[str, Any] = {
        "system": [{"type": "text", "text": f"admin is {VALUE}"}],
        "messages": [
            {"role": "user", "content": f"write {VALUE}"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "t1", "name": "send", "input": {"to": [VALUE], "n": 1}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": f"sent to {VALUE}"}],
                    },
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": f"from {VALUE}"},
                    },
                ],
            },
        ],
        "metadata": {"user_id": VALUE},
    }
    assert await dlp.filter_request("anthropic", "chat", body) is True
    assert b"alice" not in orjson.dumps(body)
    assert body["messages"][1]["content"][0]["input"] == {"to": ["[EMAIL_ADDRESS]"], "n": 1}


async def test_embeddings_input() -> None:
    dlp = await session({}, endpoint="embeddings")
    body: dict[str, Any] = {"input": [f"a {VALUE}", "plain"], "model": "e"}
    assert await dlp.filter_request("openai", "embeddings", body) is True
    assert body["input"] == ["a [EMAIL_ADDRESS]", "plain"]


async def test_an_untouched_request_reports_no_change() -> None:
    dlp = await session({})
    body = {"messages": [{"role": "user", "content": "nothing to see"}]}
    assert await dlp.filter_request("openai", "chat", body) is False
    assert dlp.ctx.dlp_findings == {}


async def test_a_route_that_did_not_say_where_its_texts_are_is_refused() -> None:
    dlp = await session({})
    with pytest.raises(GatewayError, match="could not check"):
        await dlp.filter_request("openai", "count_tokens", {})


# --- actions ----------------------------------------------------------------------------------------


async def filtered(section: dict[str, Any], text: str, **context_args: Any) -> str:
    dlp = await session(section, **context_args)
    body = {"messages": [{"role": "user", "content": text}]}
    await dlp.filter_request("openai", "chat", body)
    return str(body["messages"][0]["content"])


async def test_mask_keeps_the_last_four_characters() -> None:
    assert await filtered({"entities": {"*": "mask"}}, f"to {VALUE}") == "to *************.com"


async def test_hash_is_stable_within_an_organization_and_differs_across() -> None:
    section = {"entities": {"*": "hash"}, "hash_key": "a-secret-hash-key"}
    one = await filtered(section, VALUE, principal=principal(org_id="org-1"))
    again = await filtered(section, f"{VALUE}", principal=principal(org_id="org-1"))
    other = await filtered(section, VALUE, principal=principal(org_id="org-2"))
    assert one == again != other
    assert one.startswith("[EMAIL_ADDRESS_") and VALUE not in one


async def test_pseudonyms_number_values_per_request() -> None:
    text = f"{VALUE}, bob@example.org and {VALUE}"
    assert await filtered({"entities": {"*": "pseudonymize"}}, text) == (
        "[EMAIL_ADDRESS_1], [EMAIL_ADDRESS_2] and [EMAIL_ADDRESS_1]"
    )


async def test_block_names_every_blocked_type_and_never_the_value() -> None:
    dlp = await session({"entities": {"*": "block"}})
    body = {"messages": [{"role": "user", "content": f"{VALUE}"}, {"role": "user", "content": "KEY{abc}"}]}
    with pytest.raises(GatewayError) as raised:
        await dlp.filter_request("openai", "chat", body)
    error = raised.value
    assert (error.status, error.code) == (400, "dlp_blocked")
    assert "EMAIL_ADDRESS, SECRET" in error.message and VALUE not in error.message


async def test_the_longest_of_overlapping_findings_wins() -> None:
    assert await filtered({}, f"KEY{{{VALUE}}}") == "[SECRET]"


# --- failing closed --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["broken", "slow"])
async def test_a_failing_or_slow_filter_refuses_the_request(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    dlp = await session({"filters": {name: {}}, "timeout": 0.05})
    with pytest.raises(GatewayError) as raised:
        await dlp.filter_request("openai", "chat", {"messages": [{"role": "user", "content": VALUE}]})
    assert (raised.value.status, raised.value.code) == (503, "dlp_unavailable")
    assert f"DLP filter {name}" in caplog.text
    assert VALUE not in caplog.text and VALUE not in raised.value.message


async def test_on_error_allow_lets_the_text_through_and_says_so_once_per_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for _ in range(2):  # every request says it, once however many texts it has
        dlp = await session({"filters": {"broken": {}}, "on_error": "allow"})
        body = {"messages": [{"role": "user", "content": VALUE}, {"role": "user", "content": "again"}]}
        with caplog.at_level(logging.WARNING, "lockgate.dlp"):
            assert await dlp.filter_request("openai", "chat", body) is False
        assert dlp.ctx.dlp_findings == {("error", "request", "allow"): 1}
    assert len([r for r in caplog.records if "passed unfiltered" in r.getMessage()]) == 2
    assert VALUE not in caplog.text


async def test_a_filter_failing_on_the_answer_says_the_answer_was_withheld() -> None:
    dlp = await session({"filters": {"broken": {}}, "direction": "response"})
    with pytest.raises(GatewayError, match="could not check the model's answer") as raised:
        await dlp.filter_response(answer(VALUE))
    assert raised.value.code == "dlp_unavailable"


# --- complete answers ---------------------------------------------------------------------------------


def answer(content: str) -> CompletedResponse:
    body = {
        "id": "c",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
    }
    return CompletedResponse(orjson.dumps(body))


async def test_a_complete_answer_is_filtered_and_its_pseudonyms_restored() -> None:
    dlp = await session(
        {"direction": "both", "entities": {"EMAIL_ADDRESS": "pseudonymize", "SECRET": "redact"}}
    )
    body = {"messages": [{"role": "user", "content": VALUE}]}
    await dlp.filter_request("openai", "chat", body)
    result = await dlp.filter_response(answer("[EMAIL_ADDRESS_1] has KEY{x}"))
    assert orjson.loads(result.body)["choices"][0]["message"]["content"] == f"{VALUE} has [SECRET]"


async def test_an_answer_with_nothing_to_change_is_the_same_bytes() -> None:
    dlp = await session({"direction": "both", "entities": {"*": "log"}})
    original = answer(f"write {VALUE}")
    assert await dlp.filter_response(original) is original
    assert dlp.ctx.dlp_findings == {("EMAIL_ADDRESS", "response", "log"): 1}


async def test_a_blocked_answer_is_refused() -> None:
    dlp = await session({"direction": "response", "entities": {"*": "block"}})
    with pytest.raises(GatewayError, match="answer was blocked"):
        await dlp.filter_response(answer(VALUE))


def test_a_model_route_must_say_where_its_texts_are() -> None:
    from gateway_core import parse_config
    from gateway_core.pipeline import ModelEndpoint

    gateway = Gateway(parse_config({}))
    with pytest.raises(ValueError, match="no DLP walker for count_tokens requests in the openai dialect"):
        ModelEndpoint(gateway, "count_tokens")
