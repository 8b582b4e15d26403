"""JSON nested too deep gets a 400 naming the limit, in the dialect of the route, on every route that
reads JSON; before the limit, orjson (which writes 254 levels at most) failed with a 500 whenever the
gateway wrote such a body anew for the upstream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway_core.testing import GatewayServer
from tests.hostile.servers import HELLO, Upstreams, error_of, hostile_config

DEEP = "__deep__"


def nested(levels: int) -> bytes:
    """JSON text of exactly ``levels`` levels of objects (0: a number)."""
    return b'{"a":' * levels + b"1" + b"}" * levels


def with_nested(template: dict[str, Any], levels: int) -> bytes:
    """``template`` as JSON, its :data:`DEEP` string replaced by :func:`nested` text of ``levels``."""
    return orjson.dumps(template).replace(orjson.dumps(DEEP), nested(levels))


def depth(text: bytes) -> int:
    """How deeply JSON text nests (its strings hold no brackets here)."""
    deepest = level = 0
    for byte in text:
        if byte in b"[{":
            level += 1
            deepest = max(deepest, level)
        elif byte in b"]}":
            level -= 1
    return deepest


def chat_body(levels: int) -> bytes:
    """A chat request whose tool's parameters bring the whole body to ``levels`` levels."""
    tool = {"type": "function", "function": {"name": "lookup", "parameters": DEEP}}
    return with_nested({"model": "my-gpt", "messages": HELLO, "tools": [tool]}, levels - 4)


def messages_body(levels: int) -> bytes:
    tool = {"name": "lookup", "input_schema": DEEP}
    return with_nested({"model": "my-gpt", "max_tokens": 16, "messages": HELLO, "tools": [tool]}, levels - 3)


def count_tokens_body(levels: int) -> bytes:
    tool = {"name": "lookup", "input_schema": DEEP}
    return with_nested({"model": "my-gpt", "messages": HELLO, "tools": [tool]}, levels - 3)


def embeddings_body(levels: int) -> bytes:
    return with_nested({"model": "my-embedding", "input": "hello", "metadata": DEEP}, levels - 1)


def login_body(levels: int) -> bytes:
    return with_nested({"email": "someone@example.com", "password": DEEP}, levels - 1)


ROUTES = {
    "/v1/chat/completions": chat_body,
    "/v1/messages": messages_body,
    "/v1/messages/count_tokens": count_tokens_body,
    "/v1/embeddings": embeddings_body,
    "/admin/api/auth/login": login_body,
}


def post_json(client: httpx.Client, path: str, body: bytes) -> httpx.Response:
    return client.post(path, content=body, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("levels", [65, 300, 1000, 1100])
@pytest.mark.parametrize("path", list(ROUTES))
def test_json_nested_deeper_than_the_limit_is_a_400_naming_it(
    client: httpx.Client, path: str, levels: int
) -> None:
    body = ROUTES[path](levels)
    assert depth(body) == levels
    response = post_json(client, path, body)
    assert response.status_code == 400, response.text
    error = error_of(path, response)
    assert error["type"] == "invalid_request_error"
    assert "deeper than the limit of 64 levels" in error["message"]


# (The fake upstream refuses unknown embeddings parameters, the admin API an object as password.)
@pytest.mark.parametrize("path", [p for p in ROUTES if p.startswith("/v1/") and p != "/v1/embeddings"])
def test_json_at_the_limit_is_served(client: httpx.Client, path: str) -> None:
    body = ROUTES[path](64)
    assert depth(body) == 64
    response = post_json(client, path, body)
    assert response.status_code == 200, response.text


def test_tool_arguments_nested_too_deep_are_a_400_when_translated(client: httpx.Client) -> None:
    """Tool call arguments are JSON inside a string: decoded only to be written for an Anthropic upstream."""
    for levels, status in ((100, 200), (300, 400), (1000, 400)):
        call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": ""}}
        call["function"]["arguments"] = nested(levels).decode()
        body = {
            "model": "claude",
            "messages": [
                *HELLO,
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ],
            "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        }
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == status, (levels, response.text)
        if status == 400:
            error = error_of("/v1/chat/completions", response)
            assert error["param"] == "messages[1].tool_calls[0].function.arguments"
            assert "deeper than the limit of 128 levels" in error["message"]


def test_the_depth_limit_is_configurable(upstreams: Upstreams, tmp_path: Path) -> None:
    with (
        GatewayServer(hostile_config(upstreams, tmp_path / "lockgate.db", max_json_depth=8)) as server,
        httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.api_key}"}) as http,
    ):
        assert post_json(http, "/v1/chat/completions", chat_body(8)).status_code == 200
        response = post_json(http, "/v1/chat/completions", chat_body(9))
        assert response.status_code == 400
        assert "deeper than the limit of 8 levels" in response.json()["error"]["message"]
        response = post_json(http, "/admin/api/auth/login", login_body(9))
        assert response.status_code == 400
        assert "deeper than the limit of 8 levels" in response.json()["error"]["message"]
