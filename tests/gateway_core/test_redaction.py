"""Which secrets a deployment scrubs from upstream error messages, and which text it leaves alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway_core.config import parse_config
from gateway_core.gateway import Gateway
from gateway_core.redaction import MARKER, Redactor

POOL_KEY = "sk-pool-second-key-4b8e2d6f"
PROXY_PASSWORD = "proxy-pass-9f3a7c1e"
FILE_SECRET = "org-secret-from-file-51d0"
ENV_SECRET = "tok-from-env-6e2b90aa"
DEPLOYMENT_KEY = "sk-deployment-key-0a1b2c3d"


def test_a_deployment_scrubs_every_secret_it_was_configured_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "org.txt").write_text(FILE_SECRET + "\n")
    monkeypatch.setenv("LG_REDACTION_TEST_TOKEN", ENV_SECRET)
    config = parse_config(
        {
            "models": {
                "m": {
                    "deployments": [
                        {
                            "provider": "openai",
                            "base_url": "http://127.0.0.1:9/v1",
                            "api_key": DEPLOYMENT_KEY,
                            "credentials": [{"id": "one"}, {"id": "two", "api_key": POOL_KEY}],
                            "proxy": f"http://gateway:{PROXY_PASSWORD}@127.0.0.1:3128",
                            "headers": {"X-Org": "${file:org.txt}"},
                            "options": {"project": "${LG_REDACTION_TEST_TOKEN}"},
                        }
                    ]
                }
            }
        },
        base=tmp_path,
    )
    provider = Gateway(config).models["m"].deployments[0].provider

    for secret in (DEPLOYMENT_KEY, POOL_KEY, PROXY_PASSWORD, FILE_SECRET, ENV_SECRET):
        assert provider.redact(f"the upstream saw {secret}.") == f"the upstream saw {MARKER}."
    assert provider.redact("Invalid value for 'temperature'.") == "Invalid value for 'temperature'."


def test_only_the_credential_headers_of_a_request_are_secrets() -> None:
    redactor = Redactor().including(
        {"Authorization": "Bearer ya29.a0-run-time-token", "Content-Type": "application/json"}
    )
    text = "Bearer ya29.a0-run-time-token sent with Content-Type application/json"
    assert redactor(text) == f"{MARKER} sent with Content-Type application/json"


def test_short_values_are_not_secrets_and_longer_secrets_win() -> None:
    redactor = Redactor(["abc", "sk-long-secret-value", "sk-long-secret"])
    assert redactor("abc sk-long-secret-value sk-long-secret") == f"abc {MARKER} {MARKER}"
