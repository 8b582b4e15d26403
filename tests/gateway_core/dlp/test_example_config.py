"""The DLP example configuration starts, and does what its comments say."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from gateway_core import load_config
from gateway_core.testing import GatewayServer

EXAMPLE = Path(__file__).resolve().parents[3] / "conf" / "examples" / "dlp.yaml"
APP_KEY = "lg-example-app-key-0123456789"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> GatewayServer:
    monkeypatch.setenv("LOCKGATE_APP_KEY", APP_KEY)
    monkeypatch.setenv("LOCKGATE_DLP_HASH_KEY", "an-example-hash-key-for-the-test")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return GatewayServer(load_config(EXAMPLE), api_key=APP_KEY)


def ask(server: GatewayServer, key: str, text: str) -> str:
    with openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=10) as client:
        answer = client.chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": text}]
        )
    return answer.choices[0].message.content or ""


def test_the_example_configuration_filters_as_its_comments_say(server: GatewayServer) -> None:
    with server:
        # The mock model echoes what it received: the address comes back restored, the phone masked.
        assert ask(server, APP_KEY, "Mail bob@example.com or call +1 415 555 0132") == (
            "Mail bob@example.com or call ***********0132"
        )
        with pytest.raises(openai.BadRequestError, match="CREDIT_CARD"):
            ask(server, APP_KEY, "Charge 4111 1111 1111 1111")
        hashed = ask(server, APP_KEY, "SSN 219-09-9998")
        assert hashed.startswith("SSN [US_SSN_") and "219" not in hashed
        assert ask(server, f"{APP_KEY}-research", "Mail bob@example.com") == "Mail bob@example.com"
