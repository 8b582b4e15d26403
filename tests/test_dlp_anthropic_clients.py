"""DLP end to end through what only the ``anthropic`` SDK does: ``count_tokens``.

What every SDK does, the Messages requests of the ``anthropic`` SDK included (forwarded natively to
the Anthropic upstream, translated for the others), is in :mod:`tests.test_dlp_clients`; the setting
is described in :mod:`tests.dlp_end_to_end`.
"""

from __future__ import annotations

import pytest

from gateway_core.testing import GatewayServer
from tests.dlp_end_to_end import (
    CONVERSATION_FINDINGS,
    SYSTEM_VALUE,
    AnthropicClient,
    FindingsRecorder,
    Upstreams,
    assert_no_raw_value,
    findings,
)

pytestmark = pytest.mark.usefixtures("dlp_test")


def test_no_raw_value_reaches_count_tokens(
    dlp_gateway: GatewayServer, dlp_upstreams: Upstreams, dlp_recorder: FindingsRecorder
) -> None:
    with AnthropicClient(dlp_gateway) as client:
        client.sdk.messages.count_tokens(
            model="anthropic-redact", system=f"You assist {SYSTEM_VALUE}.", messages=client.conversation()
        )

    (request,) = dlp_upstreams["anthropic"].fake.requests_to("/v1/messages/count_tokens")
    assert_no_raw_value(request.body)
    assert request.body.count(b"[EMAIL_ADDRESS]") == CONVERSATION_FINDINGS["EMAIL_ADDRESS"]
    assert dlp_recorder.last() == findings(CONVERSATION_FINDINGS, "request", "redact")
