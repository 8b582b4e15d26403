"""The ``vertex`` provider end to end, with a service account and a fake Google OAuth token endpoint.

The gateway signs a JWT with the test's service-account key, exchanges it at the fake token
endpoint (which verifies the signature and claims) and calls a fake Vertex AI host with the access
token; the fake host hands Gemini bodies to the fake Gemini API and Claude bodies to the fake
Anthropic API, after Vertex's own checks (bearer token, project, location, ``anthropic_version``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from gateway_core.testing import GatewayServer
from tests.chat_completions import user
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.google_oauth import (
    ANTHROPIC_VERTEX_VERSION,
    FakeGoogleOAuth,
    FakeVertex,
    make_service_account,
)
from tests.fakes.openai_upstream import embedding_for
from tests.one_call import one_call

PROJECT = "lockgate-test"
LOCATION = "us-east5"
CLAUDE = "claude-sonnet-4@20250514"


@pytest.fixture(scope="module")
def oauth() -> Iterator[FakeGoogleOAuth]:
    with FakeGoogleOAuth() as server:
        yield server


@pytest.fixture(scope="module")
def vertex(oauth: FakeGoogleOAuth) -> Iterator[FakeVertex]:
    with (
        FakeGemini() as gemini,
        FakeAnthropic() as claude,
        FakeVertex(oauth, gemini, claude, project=PROJECT, location=LOCATION) as server,
    ):
        yield server


@pytest.fixture
def fakes(oauth: FakeGoogleOAuth, vertex: FakeVertex) -> Iterator[FakeVertex]:
    """The fake Vertex host (and its token endpoint and backing fakes), with nothing recorded."""
    for fake in (oauth, vertex, vertex.gemini, vertex.anthropic):
        fake.reset()
    yield vertex
    for fake in (oauth, vertex, vertex.gemini, vertex.anthropic):
        fake.reset()


def vertex_config(vertex: FakeVertex, account: dict[str, Any]) -> dict[str, Any]:
    def deployment(model: str) -> dict[str, Any]:
        entry = {
            "provider": "vertex",
            "base_url": vertex.url,
            "model": model,
            "options": {"credentials": json.dumps(account), "location": LOCATION},
        }
        return {"deployments": [entry]}

    return one_call(
        {
            "models": {
                "vertex-gemini": deployment("gemini-2.5-flash"),
                "vertex-claude": deployment(CLAUDE),
                "vertex-embed": deployment("text-embedding-005"),
            }
        }
    )


def start_gateway(oauth: FakeGoogleOAuth, vertex: FakeVertex, *, trusted: bool = True) -> GatewayServer:
    """A gateway with a fresh service account (so a fresh token cache)."""
    account = make_service_account(oauth.token_uri, project_id=PROJECT)
    if trusted:
        oauth.trust(account)
    return GatewayServer(vertex_config(vertex, account)).start()


@pytest.fixture(scope="module")
def vertex_gateway(oauth: FakeGoogleOAuth, vertex: FakeVertex) -> Iterator[GatewayServer]:
    server = start_gateway(oauth, vertex)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_gateway(oauth: FakeGoogleOAuth, vertex: FakeVertex) -> Iterator[GatewayServer]:
    """A gateway of its own for tests that count token exchanges from zero."""
    server = start_gateway(oauth, vertex)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sdk(vertex_gateway: GatewayServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=vertex_gateway.base_url, api_key=vertex_gateway.api_key, max_retries=0, timeout=10
    ) as client:
        yield client


def openai_client(server: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0, timeout=10)


def bearer_token(vertex: FakeVertex) -> str:
    """The access token of the last call to the fake Vertex host."""
    return vertex.requests[-1].headers["authorization"].removeprefix("Bearer ")


# --- Gemini on Vertex ----------------------------------------------------------------------------------


def test_gemini_on_vertex(sdk: openai.OpenAI, fakes: FakeVertex, oauth: FakeGoogleOAuth) -> None:
    completion = sdk.chat.completions.create(model="vertex-gemini", messages=user("hello vertex"))

    assert completion.choices[0].message.content == "Echo: hello vertex"
    request = fakes.requests[-1]
    assert request.path == (
        f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/gemini-2.5-flash:generateContent"
    )
    scheme, _, token = request.headers["authorization"].partition(" ")
    assert scheme == "Bearer" and oauth.token_valid(token)
    assert fakes.gemini.requests_to("generateContent")[-1].json == {
        "contents": [{"role": "user", "parts": [{"text": "hello vertex"}]}]
    }


def test_a_gemini_stream_on_vertex(sdk: openai.OpenAI, fakes: FakeVertex) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model="vertex-gemini",
            messages=user("stream from vertex"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert (
        "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)
        == "Echo: stream from vertex"
    )
    assert [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 3
    assert fakes.requests_to("streamGenerateContent")[-1].query == {"alt": "sse"}


def test_embeddings_on_vertex(sdk: openai.OpenAI, fakes: FakeVertex) -> None:
    result = sdk.embeddings.create(model="vertex-embed", input=["one text", "two texts"], dimensions=8)

    assert [item.embedding for item in result.data] == [
        embedding_for("one text", 8),
        embedding_for("two texts", 8),
    ]
    assert result.usage.prompt_tokens == 4
    assert fakes.requests_to("predict")[-1].json == {
        "instances": [{"content": "one text"}, {"content": "two texts"}],
        "parameters": {"outputDimensionality": 8},
    }


# --- Claude on Vertex ----------------------------------------------------------------------------------


def test_claude_on_vertex_through_the_openai_sdk(sdk: openai.OpenAI, fakes: FakeVertex) -> None:
    completion = sdk.chat.completions.create(
        model="vertex-claude", messages=[{"role": "system", "content": "Be brief."}, *user("hello claude")]
    )

    assert completion.choices[0].message.content == "Echo: hello claude"
    request = fakes.requests_to("rawPredict")[-1]
    assert request.path.endswith(f"/publishers/anthropic/models/{CLAUDE}:rawPredict")
    assert request.json == {
        "anthropic_version": ANTHROPIC_VERTEX_VERSION,
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "hello claude"}],
        "system": "Be brief.",
    }
    assert fakes.anthropic.requests_to("/v1/messages")[-1].json["model"] == CLAUDE


def test_a_claude_stream_on_vertex_through_the_openai_sdk(sdk: openai.OpenAI, fakes: FakeVertex) -> None:
    chunks = list(
        sdk.chat.completions.create(model="vertex-claude", messages=user("stream claude"), stream=True)
    )

    assert "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices) == "Echo: stream claude"
    assert [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason] == ["stop"]
    body = fakes.requests_to("streamRawPredict")[-1].json
    assert body["stream"] is True and "model" not in body


def test_claude_on_vertex_through_the_anthropic_sdk(vertex_gateway: GatewayServer, fakes: FakeVertex) -> None:
    with anthropic.Anthropic(
        base_url=vertex_gateway.url, api_key=vertex_gateway.api_key, max_retries=0, timeout=10
    ) as client:
        message = client.messages.create(
            model="vertex-claude", max_tokens=100, messages=[{"role": "user", "content": "hi from anthropic"}]
        )
        with client.messages.stream(
            model="vertex-claude", max_tokens=100, messages=[{"role": "user", "content": "stream it"}]
        ) as stream:
            texts = list(stream.text_stream)
            final = stream.get_final_message()
        count = client.messages.count_tokens(
            model="vertex-claude", messages=[{"role": "user", "content": "count these four words"}]
        )

    assert message.content[0].type == "text" and message.content[0].text == "Echo: hi from anthropic"
    assert message.model == CLAUDE
    assert "".join(texts) == "Echo: stream it"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 3
    assert count.input_tokens == 4
    bodies = [request.json for request in fakes.requests]
    assert [body.get("anthropic_version") for body in bodies[:2]] == [ANTHROPIC_VERTEX_VERSION] * 2
    assert all("model" not in body for body in bodies[:2])
    assert fakes.requests[2].path.endswith("/publishers/anthropic/models/count-tokens:rawPredict")
    assert bodies[2]["model"] == CLAUDE


# --- access tokens -------------------------------------------------------------------------------------


def test_the_token_is_cached_across_requests(
    fresh_gateway: GatewayServer, fakes: FakeVertex, oauth: FakeGoogleOAuth
) -> None:
    with openai_client(fresh_gateway) as client:
        for model in ("vertex-gemini", "vertex-claude", "vertex-gemini", "vertex-claude", "vertex-embed"):
            if model == "vertex-embed":
                client.embeddings.create(model=model, input="x")
            else:
                client.chat.completions.create(model=model, messages=user("hi"))

    assert oauth.exchanges == 1  # the deployments share the account's token
    tokens = {request.headers["authorization"] for request in fakes.requests}
    assert len(tokens) == 1


def test_a_token_is_refreshed_before_it_expires(
    fresh_gateway: GatewayServer, fakes: FakeVertex, oauth: FakeGoogleOAuth
) -> None:
    oauth.behave(expires_in=120)  # inside the refresh margin: a new token is fetched for the next call

    with openai_client(fresh_gateway) as client:
        client.chat.completions.create(model="vertex-gemini", messages=user("one"))
        assert oauth.exchanges == 1
        client.chat.completions.create(model="vertex-gemini", messages=user("two"))
        assert oauth.exchanges == 2
        oauth.behave(expires_in=3599)
        client.chat.completions.create(model="vertex-gemini", messages=user("three"))
        client.chat.completions.create(model="vertex-gemini", messages=user("four"))

    assert oauth.exchanges == 3
    first, second, third, fourth = (request.headers["authorization"] for request in fakes.requests)
    assert len({first, second, third}) == 3
    assert third == fourth


async def test_concurrent_first_requests_share_one_exchange(
    fresh_gateway: GatewayServer, fakes: FakeVertex, oauth: FakeGoogleOAuth
) -> None:
    oauth.behave(delay=0.3)  # every request arrives while the exchange is under way

    async with openai.AsyncOpenAI(
        base_url=fresh_gateway.base_url, api_key=fresh_gateway.api_key, max_retries=0, timeout=10
    ) as client:
        completions = await asyncio.gather(
            *(
                client.chat.completions.create(model="vertex-gemini", messages=user(f"parallel {n}"))
                for n in range(10)
            )
        )

    assert sorted(c.choices[0].message.content or "" for c in completions) == sorted(
        f"Echo: parallel {n}" for n in range(10)
    )
    assert oauth.exchanges == 1
    assert len(fakes.requests) == 10


def test_the_token_never_reaches_logs_or_responses(
    fresh_gateway: GatewayServer,
    fakes: FakeVertex,
    oauth: FakeGoogleOAuth,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    with openai_client(fresh_gateway) as client:
        response = client.chat.completions.with_raw_response.create(
            model="vertex-claude", messages=user("hi")
        )
        texts += [response.http_response.text, str(response.http_response.headers)]
        oauth.revoke(bearer_token(fakes))
        with pytest.raises(openai.InternalServerError) as revoked:
            client.chat.completions.create(model="vertex-gemini", messages=user("hi"))
        fakes.anthropic.behave(status=401, error_type="authentication_error", message="invalid credentials")
        with pytest.raises(openai.InternalServerError) as refused:
            client.chat.completions.create(model="vertex-claude", messages=user("hi"))
        for caught in (refused, revoked):
            texts += [caught.value.response.text, str(caught.value.response.headers)]

    assert any(record.name.startswith("lockgate") for record in caplog.records)  # the gateway did log
    tokens = [request.headers["authorization"].removeprefix("Bearer ") for request in fakes.requests]
    assert len(set(tokens)) == 2  # the revoked one and its replacement
    for token in tokens:
        assert token.removeprefix("ya29.") not in caplog.text
        assert all(token.removeprefix("ya29.") not in text for text in texts)


@pytest.mark.parametrize("failure", ["server-error", "refused-grant", "unknown-account"])
def test_a_failing_token_endpoint_is_a_clear_502(
    oauth: FakeGoogleOAuth, vertex: FakeVertex, fakes: FakeVertex, failure: str
) -> None:
    if failure == "server-error":
        oauth.behave(fail_status=503)
    elif failure == "refused-grant":
        oauth.behave(fail_status=400)
    server = start_gateway(oauth, vertex, trusted=failure != "unknown-account")
    try:
        with openai_client(server) as client, pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="vertex-gemini", messages=user("hi"))
    finally:
        server.stop()

    assert caught.value.status_code == 502
    assert "Could not obtain an access token for the service account" in caught.value.message
    assert caught.value.code == "upstream_auth_error"
    assert fakes.requests == []  # Vertex was never called without a token
    assert oauth.exchanges == 0


def test_a_key_that_does_not_match_the_account_is_refused(
    oauth: FakeGoogleOAuth, vertex: FakeVertex, fakes: FakeVertex
) -> None:
    account = make_service_account(oauth.token_uri, project_id=PROJECT, name="mismatch")
    oauth.trust(account)
    impostor = {**account, "private_key": make_service_account(oauth.token_uri)["private_key"]}

    with (
        GatewayServer(vertex_config(vertex, impostor)) as server,
        openai_client(server) as client,
        pytest.raises(openai.InternalServerError) as caught,
    ):
        client.chat.completions.create(model="vertex-gemini", messages=user("hi"))

    assert caught.value.status_code == 502
    assert oauth.exchanges == 0
    assert oauth.requests  # the token endpoint was asked and refused the signature


def test_extended_thinking_passes_through_to_claude_on_vertex(
    vertex_gateway: GatewayServer, fakes: FakeVertex
) -> None:
    with anthropic.Anthropic(
        base_url=vertex_gateway.url, api_key=vertex_gateway.api_key, max_retries=0, timeout=10
    ) as client:
        message = client.messages.create(
            model="vertex-claude",
            max_tokens=2048,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[{"role": "user", "content": "think first"}],
        )

    assert [block.type for block in message.content] == ["thinking", "text"]
    assert fakes.requests_to("rawPredict")[-1].json == {
        "anthropic_version": ANTHROPIC_VERTEX_VERSION,
        "max_tokens": 2048,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": "think first"}],
    }


@pytest.mark.parametrize("model", ["vertex-gemini", "vertex-claude"])
def test_a_token_vertex_refuses_is_replaced_on_the_next_request(
    fresh_gateway: GatewayServer, fakes: FakeVertex, oauth: FakeGoogleOAuth, model: str
) -> None:
    with openai_client(fresh_gateway) as client:
        client.chat.completions.create(model=model, messages=user("before"))
        oauth.revoke(bearer_token(fakes))  # long before it expires

        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model=model, messages=user("revoked"))
        after = client.chat.completions.create(model=model, messages=user("after"))

    assert caught.value.status_code == 502
    assert after.choices[0].message.content == "Echo: after"
    assert oauth.exchanges == 2
