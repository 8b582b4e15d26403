"""Pseudonyms: only the placeholders of values the client sent come back in the answer."""

from __future__ import annotations

import orjson

from gateway_core.dlp.actions import Pseudonyms
from gateway_core.providers import CompletedResponse
from tests.gateway_core.dlp.helpers import session

VALUE = "alice@example.com"


def test_a_placeholder_of_a_value_found_in_an_answer_is_not_restored() -> None:
    pseudonyms = Pseudonyms()
    sent = pseudonyms.placeholder("EMAIL_ADDRESS", VALUE)
    found = pseudonyms.placeholder("EMAIL_ADDRESS", "zed@example.com", restore=False)

    assert (sent, found) == ("[EMAIL_ADDRESS_1]", "[EMAIL_ADDRESS_2]")
    assert pseudonyms.restore(f"{sent} {found}") == f"{VALUE} {found}"
    assert pseudonyms.placeholder("EMAIL_ADDRESS", "zed@example.com") == found  # stable in the request


async def test_a_value_the_model_writes_keeps_its_placeholder() -> None:
    dlp = await session({"direction": "both", "entities": {"*": "pseudonymize"}})
    await dlp.filter_request("openai", "chat", {"messages": [{"role": "user", "content": VALUE}]})
    message = {"role": "assistant", "content": "[EMAIL_ADDRESS_1] and zed@example.com"}
    body = {"id": "c", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}

    result = await dlp.filter_response(CompletedResponse(orjson.dumps(body)))

    content = orjson.loads(result.body)["choices"][0]["message"]["content"]
    assert content == f"{VALUE} and [EMAIL_ADDRESS_2]"
    assert dlp.ctx.dlp_findings == {
        ("EMAIL_ADDRESS", "request", "pseudonymize"): 1,
        ("EMAIL_ADDRESS", "response", "pseudonymize"): 1,
    }
