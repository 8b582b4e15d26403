"""The plugin manager: loading, blocking, validation, and the await-what-you-get hook calls."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types

import pytest

from gateway_core import ConfigError, Gateway, GatewayError, hookimpl, parse_config
from gateway_core.plugins import PluginHost

BUILTIN = {"config_keys", "config_routes", "mock", "openai", "round_robin"}


def run_python(code: str, **env: str) -> str:
    import os

    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=True,
    )
    return result.stdout.strip()


def test_builtin_plugins_load_through_entry_points() -> None:
    names = {plugin["name"] for plugin in PluginHost().describe()}
    assert names >= BUILTIN


def test_described_plugins_have_version_and_hooks() -> None:
    described = {plugin["name"]: plugin for plugin in PluginHost().describe()}
    assert described["mock"]["version"]
    assert described["mock"]["hooks"] == ["lockgate_register_providers"]
    assert described["config_keys"]["hooks"] == ["lockgate_authenticate", "lockgate_startup"]


def test_a_disabled_plugin_is_never_imported() -> None:
    out = run_python(
        """
        import sys
        from gateway_core.plugins import PluginHost
        host = PluginHost(disabled={"openai"})
        print("plugins.providers.openai" in sys.modules, "openai" in {p["name"] for p in host.describe()})
        """
    )
    assert out == "False False"


def test_load_plugins_environment_variable_narrows_loading() -> None:
    out = run_python(
        """
        import sys
        from gateway_core.plugins import PluginHost
        print(sorted(p["name"] for p in PluginHost().describe()), "plugins.providers.openai" in sys.modules)
        """,
        LOCKGATE_LOAD_PLUGINS="mock,config_keys",
    )
    assert out == "['config_keys', 'mock'] False"


def test_configured_plugin_name_must_exist() -> None:
    config = parse_config({"plugins": {"opneai": {"enabled": False}}}, source="conf/x.yaml")
    with pytest.raises(
        ConfigError, match=r"conf/x.yaml: plugins.opneai: no plugin of that name is installed"
    ):
        Gateway(config)


def test_implementation_of_an_unknown_hook_is_rejected() -> None:
    plugin = types.ModuleType("typo_plugin")

    @hookimpl
    def lockgate_register_provider(register):  # type: ignore[no-untyped-def]
        pass

    plugin.lockgate_register_provider = lockgate_register_provider  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="lockgate_register_provider"):
        PluginHost(extra=[("typo_plugin", plugin)])


def test_a_name_registered_twice_names_both_plugins() -> None:
    plugin = types.ModuleType("second_mock")

    @hookimpl
    def lockgate_register_providers(register):  # type: ignore[no-untyped-def]
        from plugins.providers.mock import MockProvider

        register("mock", MockProvider)

    plugin.lockgate_register_providers = lockgate_register_providers  # type: ignore[attr-defined]
    with pytest.raises(
        ConfigError, match=r"provider 'mock' is registered twice \(by plugin 'mock' and by plugin "
    ):
        Gateway(parse_config({}), extra_plugins=[("second_mock", plugin)])


async def test_first_result_awaits_async_hooks_and_closes_the_rest() -> None:
    calls: list[str] = []

    class Early:
        @hookimpl(tryfirst=True)
        async def lockgate_route(self, ctx, model):  # type: ignore[no-untyped-def]
            calls.append("early")
            return None

    class Answer:
        @hookimpl
        async def lockgate_route(self, ctx, model):  # type: ignore[no-untyped-def]
            calls.append("answer")
            return f"group for {model}"

    class Late:
        @hookimpl(trylast=True)
        async def lockgate_route(self, ctx, model):  # type: ignore[no-untyped-def]
            calls.append("late")
            return "never"

    host = PluginHost(extra=[("early", Early()), ("answer", Answer()), ("late", Late())])
    # The built-in config_routes router is trylast as well; the answer comes before both.
    assert await host.first_result("lockgate_route", ctx=None, model="m") == "group for m"
    assert calls == ["early", "answer"]


async def test_exception_in_an_async_hook_propagates_without_unawaited_warnings() -> None:
    class Rejects:
        @hookimpl(tryfirst=True)
        async def lockgate_policy_check(self, ctx):  # type: ignore[no-untyped-def]
            raise GatewayError(429, "slow down")

    class Other:
        @hookimpl
        async def lockgate_policy_check(self, ctx):  # type: ignore[no-untyped-def]
            raise AssertionError("must not run")

    host = PluginHost(extra=[("rejects", Rejects()), ("other", Other())])
    assert host.has_policies
    with pytest.raises(GatewayError, match="slow down"):
        await host.call_all("lockgate_policy_check", ctx=None)
