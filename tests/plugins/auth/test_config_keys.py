"""The ``config_keys`` auth plugin: keys listed in the configuration, their metadata and DLP override."""

from __future__ import annotations

from typing import Any

import pytest

from gateway_core import ConfigError
from gateway_core.testing import GatewayServer
from tests.plugins.auth.gateways import DLP_SECTION, DlpSpy, chat

KEY = "lg-config-key-with-dlp-0123456789"
PLAIN_KEY = "lg-config-key-without-dlp-012345"


def config(*keys: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "models": {"mock-echo": {"deployments": [{"provider": "mock"}]}},
        "dlp": DLP_SECTION,
        "plugins": {"config_keys": {"keys": list(keys)}},
        **extra,
    }


def test_a_config_key_carries_its_dlp_override_beside_its_metadata(lockgate_server: Any) -> None:
    spy = DlpSpy()
    server = lockgate_server(
        config(
            {
                "name": "ci",
                "key": KEY,
                "metadata": {"team": "search"},
                "rpm": 10,
                "dlp": {"entities": {"EMAIL_ADDRESS": "mask"}, "direction": "both", "filters": ["emails"]},
            },
            {"name": "plain", "key": PLAIN_KEY, "metadata": {"team": "web"}},
        ),
        extra_plugins=[("spy", spy)],
    )
    chat(server, KEY)
    chat(server, PLAIN_KEY)

    with_dlp, plain = spy.principals
    assert with_dlp.metadata == {
        "team": "search",
        "limits": {"rpm": 10, "tpm": None, "max_parallel": None},
        # Only what the override sets, as the admin API stores the overrides of database keys.
        "dlp": {"entities": {"EMAIL_ADDRESS": "mask"}, "direction": "both", "filters": ["emails"]},
    }
    assert plain.metadata == {"team": "web"}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"dlp": {"filters": ["presidio"]}},
            r"key 'ci': dlp\.filters: `presidio` is not a configured filter; the configured filters: "
            r"`emails`, `phones`",
        ),
        (
            {"dlp": {"entities": {"EMAIL_ADDRESS": "hash"}}},
            r"key 'ci': dlp\.entities\.EMAIL_ADDRESS: the `hash` action needs a key",
        ),
        ({"dlp": {"entities": {"EMAIL_ADDRESS": "scramble"}}}, r"dlp\.entities\.EMAIL_ADDRESS"),
        ({"metadata": {"dlp": "mask"}}, r"give the key's DLP override as `dlp:`, not in `metadata`"),
    ],
)
def test_an_unusable_dlp_override_of_a_config_key_stops_start_up(entry: dict[str, Any], message: str) -> None:
    # Without `secrets` and `dlp.hash_key`, the gateway has no key for the `hash` action.
    with pytest.raises(ConfigError, match=message):
        GatewayServer(config({"name": "ci", "key": KEY, **entry}), extra_plugins=[("spy", DlpSpy())]).start()


def test_a_config_key_may_hash_once_the_gateway_has_a_key(lockgate_server: Any) -> None:
    spy = DlpSpy()
    hashing = {**DLP_SECTION, "hash_key": "a-key-for-the-hash-action-0123456789"}
    entry = {"name": "ci", "key": KEY, "dlp": {"entities": {"*": "hash"}}}
    server = lockgate_server(config(entry, dlp=hashing), extra_plugins=[("spy", spy)])
    chat(server, KEY)
    assert spy.principals[0].metadata["dlp"] == {"entities": {"*": "hash"}}
