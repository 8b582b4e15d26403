"""DLP end to end through what only the ``openai`` SDK does: embeddings, and the overrides per model
group, organization and key (shown once, on the OpenAI upstream).

What every SDK does is in :mod:`tests.test_dlp_clients`; the setting is described in
:mod:`tests.dlp_end_to_end`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from gateway_core.testing import GatewayServer
from tests.dlp_end_to_end import (
    ACME_KEY,
    ACME_PSEUDO_KEY,
    KEY_VALUE,
    LAST_VALUE,
    PART_VALUE,
    RELAXED_KEY,
    FindingsRecorder,
    OpenAIClient,
    Upstreams,
)

pytestmark = pytest.mark.usefixtures("dlp_test")


@pytest.fixture(scope="module")
def client(dlp_gateway: GatewayServer) -> Iterator[OpenAIClient]:
    with OpenAIClient(dlp_gateway) as client:
        yield client


# --- embeddings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["openai", "azure"])
def test_no_raw_value_reaches_the_embeddings_upstream(
    client: OpenAIClient, dlp_upstreams: Upstreams, dlp_recorder: FindingsRecorder, name: str
) -> None:
    upstream = dlp_upstreams[name]
    client.sdk.embeddings.create(
        model=f"{name}-embed-redact", input=[f"Mail {PART_VALUE}", f"Key {KEY_VALUE}"]
    )
    client.sdk.embeddings.create(model=f"{name}-embed-redact", input=f"Mail {LAST_VALUE}")

    first, second = upstream.bodies()
    assert json.loads(first)["input"] == ["Mail [EMAIL_ADDRESS]", "Key [AWS_ACCESS_KEY]"]
    assert json.loads(second)["input"] == "Mail [EMAIL_ADDRESS]"
    assert dlp_recorder.settled() == [
        {("EMAIL_ADDRESS", "request", "redact"): 1, ("AWS_ACCESS_KEY", "request", "redact"): 1},
        {("EMAIL_ADDRESS", "request", "redact"): 1},
    ]


@pytest.mark.parametrize("name", ["openai", "azure"])
def test_a_blocked_embeddings_request_reaches_no_upstream(
    client: OpenAIClient, dlp_upstreams: Upstreams, name: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.sdk.embeddings.create(model=f"{name}-embed-block", input=["fine", f"Key {KEY_VALUE}"])

    assert caught.value.code == "dlp_blocked"
    assert "it contains AWS_ACCESS_KEY." in caught.value.message
    assert dlp_upstreams[name].bodies() == []


# --- overrides per model group, organization and key ---------------------------------------------------


def test_a_model_group_blocks_what_the_gateway_redacts(
    client: OpenAIClient, dlp_upstreams: Upstreams
) -> None:
    message = f"Mail {PART_VALUE}."

    assert client.ask("openai-redact", message, False).text == "Echo: Mail [EMAIL_ADDRESS]."
    with pytest.raises(openai.BadRequestError, match="it contains EMAIL_ADDRESS"):
        client.ask("openai-block", message, False)
    assert len(dlp_upstreams["openai"].bodies()) == 1


def test_an_organization_blocks_one_type(dlp_gateway: GatewayServer, dlp_upstreams: Upstreams) -> None:
    with OpenAIClient(dlp_gateway, ACME_KEY) as acme, OpenAIClient(dlp_gateway) as other:
        assert acme.ask("openai-redact", f"Mail {PART_VALUE}.", False).text == "Echo: Mail [EMAIL_ADDRESS]."
        with pytest.raises(openai.BadRequestError) as caught:
            acme.ask("openai-redact", f"Mail {PART_VALUE} the key {KEY_VALUE}.", False)
        assert other.ask("openai-redact", f"Key {KEY_VALUE}.", False).text == "Echo: Key [AWS_ACCESS_KEY]."

    assert caught.value.code == "dlp_blocked"
    assert caught.value.message.endswith("it contains AWS_ACCESS_KEY.")  # e-mail addresses are still redacted
    assert len(dlp_upstreams["openai"].bodies()) == 2


def test_a_key_overrides_its_organization(dlp_gateway: GatewayServer, dlp_upstreams: Upstreams) -> None:
    message = f"Key {KEY_VALUE} for {PART_VALUE}."
    with OpenAIClient(dlp_gateway, ACME_PSEUDO_KEY) as key:
        answer = key.ask("openai-redact", message, False)  # acme blocks AWS keys, this key does not

    assert dlp_upstreams["openai"].body().endswith(b'"Key [AWS_ACCESS_KEY_1] for [EMAIL_ADDRESS]."}]}')
    assert answer.text == f"Echo: Key {KEY_VALUE} for [EMAIL_ADDRESS]."


def test_an_organization_turns_dlp_off(
    dlp_gateway: GatewayServer, dlp_upstreams: Upstreams, dlp_recorder: FindingsRecorder
) -> None:
    with OpenAIClient(dlp_gateway, RELAXED_KEY) as relaxed:
        answer = relaxed.ask("openai-block", f"Mail {PART_VALUE}.", False)  # its layer comes last

    assert answer.text == f"Echo: Mail {PART_VALUE}."
    assert PART_VALUE.encode() in dlp_upstreams["openai"].body()
    assert dlp_recorder.last() is None
