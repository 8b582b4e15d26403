"""Configuration loading: secret references, optional deployments, messages that name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from gateway_core import ConfigError, load_config, parse_config

MOCK = {"deployments": [{"provider": "mock"}]}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lockgate.yaml"
    path.write_text(text)
    return path


def test_environment_reference_is_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LG_TEST_KEY", "sk-from-env")
    config = parse_config(
        {"models": {"m": {"deployments": [{"provider": "openai", "api_key": "${LG_TEST_KEY}"}]}}}
    )
    key = config.models["m"].deployments[0].api_key
    assert key is not None and key.get_secret_value() == "sk-from-env"


def test_reference_inside_a_string_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LG_TEST_HOST", "example.test")
    monkeypatch.delenv("LG_TEST_PORT", raising=False)
    config = parse_config(
        {
            "models": {
                "m": {
                    "deployments": [
                        {"provider": "mock", "base_url": "https://${LG_TEST_HOST}:${LG_TEST_PORT:-8443}/v1"}
                    ]
                }
            }
        }
    )
    assert config.models["m"].deployments[0].base_url == "https://example.test:8443/v1"


def test_escaped_reference_stays_literal() -> None:
    config = parse_config(
        {"models": {"m": {"deployments": [{"provider": "mock", "headers": {"x": "$${NOT}"}}]}}}
    )
    assert config.models["m"].deployments[0].headers == {"x": "${NOT}"}


def test_file_reference_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("file-secret-value\n")
    path = write(
        tmp_path,
        "models:\n  m:\n    deployments:\n      - provider: openai\n        api_key: ${file:secret}\n",
    )
    key = load_config(path).models["m"].deployments[0].api_key
    assert key is not None and key.get_secret_value() == "file-secret-value"


def test_missing_secret_file_names_the_key(tmp_path: Path) -> None:
    path = write(
        tmp_path, "models:\n  m:\n    deployments:\n      - provider: openai\n        api_key: ${file:nope}\n"
    )
    with pytest.raises(ConfigError, match=r"lockgate.yaml: models.m.deployments\[0\].api_key: cannot read"):
        load_config(path)


def test_unset_variable_names_file_key_and_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LG_TEST_UNSET", raising=False)
    path = write(
        tmp_path,
        "models:\n  m:\n    deployments:\n      - provider: openai\n        api_key: ${LG_TEST_UNSET}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "models.m.deployments[0].api_key: environment variable LG_TEST_UNSET is not set" in message


def test_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LG_TEST_EMPTY", "")
    with pytest.raises(ConfigError, match="LG_TEST_EMPTY is not set"):
        parse_config(
            {"models": {"m": {"deployments": [{"provider": "openai", "api_key": "${LG_TEST_EMPTY}"}]}}}
        )


def test_optional_deployment_without_its_key_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LG_TEST_UNSET", raising=False)
    config = parse_config(
        {
            "models": {
                "real": {
                    "deployments": [{"provider": "openai", "api_key": "${LG_TEST_UNSET}", "optional": True}]
                },
                "mixed": {
                    "deployments": [
                        {"provider": "openai", "api_key": "${LG_TEST_UNSET}", "optional": True},
                        {"provider": "mock"},
                    ]
                },
                "mock": MOCK,
            }
        }
    )
    assert set(config.models) == {"mixed", "mock"}
    assert [d.provider for d in config.models["mixed"].deployments] == ["mock"]


def test_optional_deployment_switches_on_when_the_key_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LG_TEST_KEY", "sk-present")
    config = parse_config(
        {
            "models": {
                "real": {
                    "deployments": [{"provider": "openai", "api_key": "${LG_TEST_KEY}", "optional": True}]
                }
            }
        }
    )
    assert "real" in config.models


def test_unknown_key_is_reported_with_its_path(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  prot: 9000\n")
    with pytest.raises(ConfigError, match=r"server.prot: unknown key"):
        load_config(path)


def test_wrong_type_is_reported_with_its_path() -> None:
    with pytest.raises(
        ConfigError, match=r"models.m.deployments\[0\].timeout.read: Input should be a valid number"
    ):
        parse_config({"models": {"m": {"deployments": [{"provider": "mock", "timeout": {"read": "soon"}}]}}})


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "models: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_secret_values_are_not_shown_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LG_TEST_KEY", "sk-very-secret-value")
    config = parse_config(
        {"models": {"m": {"deployments": [{"provider": "openai", "api_key": "${LG_TEST_KEY}"}]}}}
    )
    assert "sk-very-secret-value" not in repr(config)
    assert "sk-very-secret-value" not in str(config.model_dump())


class PluginOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int


def test_plugin_options_are_validated_under_the_plugin_name() -> None:
    config = parse_config({"plugins": {"example": {"limit": "many"}}}, source="conf/x.yaml")
    with pytest.raises(ConfigError, match=r"conf/x.yaml: invalid configuration\n  plugins.example.limit: "):
        config.plugin_config("example", PluginOptions)


def test_plugin_enabled_flag_is_not_an_option() -> None:
    config = parse_config({"plugins": {"example": {"enabled": True, "limit": 3}, "off": {"enabled": False}}})
    assert config.plugin_config("example", PluginOptions).limit == 3
    assert config.disabled_plugins() == {"off"}


def test_shipped_configuration_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "OPENROUTER_API_KEY", "ZHIPUAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "conf").mkdir()
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "dev-key").write_text("lg-test-dev-key-for-config-check\n")
    (tmp_path / "var" / "jwt-secret").write_text("a-test-secret-that-is-long-enough-for-the-check\n")
    shipped = tmp_path / "conf" / "lockgate.yaml"
    shipped.write_text((root / "conf" / "lockgate.yaml").read_text())
    config = load_config(shipped)
    assert "mock-echo" in config.models
    assert "gpt-4o-mini" not in config.models
