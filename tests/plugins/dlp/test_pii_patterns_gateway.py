"""``pii_patterns`` in a gateway: what reaches the upstream, and a streamed answer in tiny chunks."""

from __future__ import annotations

import json
from typing import Any

import httpx

from gateway_core.testing import GatewayServer
from tests.fakes import FakeOpenAI
from tests.one_call import one_call

#: Values of several types, among prose and look-alikes that must come through untouched.
VALUES = {
    "EMAIL_ADDRESS": "dana.lee@example.com",
    "PHONE_NUMBER": "+1 415 555 0132",
    "CREDIT_CARD": "4111 1111 1111 1111",
    "AWS_ACCESS_KEY": "AKIAIOSFODNN7EXAMPLE",
    "IBAN_CODE": "GB82 WEST 1234 5698 7654 32",
    "OPENAI_API_KEY": "sk-proj-Qx7Lm2Rt9Vb4Nc8Zw1Yk5Jd3Hf6Gs0Pa",
}
LOOK_ALIKES = "version 4.2.1.7 of 2026-03-15, order #88213, uuid 123e4567-e89b-12d3-a456-426614174000"
TEXT = (
    f"Reach Dana at {VALUES['EMAIL_ADDRESS']} or {VALUES['PHONE_NUMBER']}. Card {VALUES['CREDIT_CARD']}, "
    f"key {VALUES['AWS_ACCESS_KEY']}, IBAN {VALUES['IBAN_CODE']}, token {VALUES['OPENAI_API_KEY']}. "
    f"Not these: {LOOK_ALIKES}."
)
REDACTED = (
    "Reach Dana at [EMAIL_ADDRESS] or [PHONE_NUMBER]. Card [CREDIT_CARD], key [AWS_ACCESS_KEY], "
    f"IBAN [IBAN_CODE], token [OPENAI_API_KEY]. Not these: {LOOK_ALIKES}."
)


def config(fake: FakeOpenAI) -> dict[str, Any]:
    deployment = {
        "provider": "openai",
        "base_url": fake.base_url,
        "api_key": fake.api_key,
        "model": "gpt-4o-mini",
    }
    return one_call(
        {
            "models": {"m": {"deployments": [deployment]}},
            "dlp": {"filters": {"pii_patterns": {"phone_regions": ["US", "GB"]}}, "direction": "both"},
        }
    )


def client_of(server: GatewayServer) -> httpx.Client:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=10)


def test_the_upstream_receives_the_request_redacted(fake: FakeOpenAI) -> None:
    fake.behave(reply="ok")
    with GatewayServer(config(fake)) as server, client_of(server) as client:
        answer = client.post(
            "/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": TEXT}]}
        )
    assert answer.status_code == 200, answer.text
    [sent] = [json.loads(request.body) for request in fake.requests if request.method == "POST"]
    assert sent["messages"][-1]["content"] == REDACTED


def test_a_streamed_answer_in_one_character_chunks_is_redacted(fake: FakeOpenAI) -> None:
    fake.behave(reply=TEXT, chunks=len(TEXT))
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    content = []
    with (
        GatewayServer(config(fake)) as server,
        client_of(server) as client,
        client.stream("POST", "/chat/completions", json=body) as answer,
    ):
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    content.append(choice["delta"].get("content") or "")
    assert "".join(content) == REDACTED
