"""Start-up hooks: what plugins register is what the gateway serves; shutdown reaches every plugin."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import openai
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway_core import (
    Balancer,
    Command,
    ConfigError,
    Deployment,
    DlpFilter,
    ExtraRoute,
    Finding,
    Gateway,
    RequestContext,
    authenticate_request,
    hookimpl,
    parse_config,
)
from gateway_core.cli import build_parser
from gateway_core.plugins import PluginHost
from gateway_core.testing import GatewayServer


class LastOne(Balancer):
    name = "last_one"

    def choose(self, ctx: RequestContext, candidates: Sequence[Deployment]) -> Deployment:
        return candidates[-1]


class Strategies:
    @hookimpl
    def lockgate_register_balancers(self, register: Callable[[str, type[Balancer]], None]) -> None:
        register("last_one", LastOne)


def replying(text: str) -> dict[str, Any]:
    return {"provider": "mock", "options": {"reply": text}}


def test_a_registered_balancer_is_chosen_by_strategy_name() -> None:
    config = {"models": {"m": {"strategy": "last_one", "deployments": [replying("first"), replying("last")]}}}
    with GatewayServer(config, extra_plugins=[("strategies", Strategies())]) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key)
        answers = {
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            .choices[0]
            .message.content
            for _ in range(4)
        }
    assert answers == {"last"}


def test_an_unknown_strategy_names_the_key_and_the_known_ones() -> None:
    config = parse_config(
        {"models": {"m": {"strategy": "nope", "deployments": [replying("x")]}}}, source="gw.yaml"
    )
    with pytest.raises(
        ConfigError, match=r"gw.yaml: models.m.strategy: unknown balancer 'nope' \(known: .*round_robin"
    ):
        Gateway(config)


async def hello(request: Request) -> Response:
    principal = await authenticate_request(request)
    return JSONResponse({"hello": principal.name})


class Routes:
    @hookimpl
    def lockgate_register_routes(self, register: Callable[[ExtraRoute], None]) -> None:
        register(ExtraRoute("/-/hello", hello))


def test_a_registered_route_is_served_with_auth_and_a_request_id() -> None:
    with GatewayServer({}, extra_plugins=[("routes", Routes())]) as server:
        anonymous = httpx.get(f"{server.url}/-/hello")
        known = httpx.get(f"{server.url}/-/hello", headers={"Authorization": f"Bearer {server.api_key}"})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "missing_api_key"
    assert known.json() == {"hello": "test"}
    assert known.headers["x-request-id"].startswith("req_")


def test_a_route_may_not_shadow_a_core_route() -> None:
    class Shadow:
        @hookimpl
        def lockgate_register_routes(self, register: Callable[[ExtraRoute], None]) -> None:
            register(ExtraRoute("/v1/models", hello))

    from gateway_core.app import create_app

    with pytest.raises(ConfigError, match="shadows the core route /v1/models"):
        create_app(parse_config({}), extra_plugins=[("shadow", Shadow())])


class Upper(DlpFilter):
    name = "upper"
    entity_types = frozenset({"UPPER"})

    def find(self, text: str, entity_types: frozenset[str]) -> list[Finding]:
        return [Finding("UPPER", i, i + 1) for i, c in enumerate(text) if c.isupper()]


def test_registered_dlp_filters_are_in_the_registry() -> None:
    class Filters:
        @hookimpl
        def lockgate_register_dlp_filters(self, register: Callable[[str, type[DlpFilter]], None]) -> None:
            register("upper", Upper)

    gateway = Gateway(parse_config({}), extra_plugins=[("filters", Filters())])
    assert gateway.dlp_filters.get("upper") is Upper
    assert gateway.dlp_filters.owner("upper") == "filters"


def test_an_async_registration_hook_is_a_start_up_error() -> None:
    class AsyncFilters:
        @hookimpl
        async def lockgate_register_dlp_filters(
            self, register: Callable[[str, type[DlpFilter]], None]
        ) -> None:
            register("upper", Upper)

    with pytest.raises(
        ConfigError, match="lockgate_register_dlp_filters must be a plain function, not async"
    ):
        Gateway(parse_config({}), extra_plugins=[("async_filters", AsyncFilters())])


def test_a_registered_command_runs_from_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--name", default="world")

    def run(args: argparse.Namespace) -> int:
        print(f"hello {args.name}")
        return 3

    class Commands:
        @hookimpl
        def lockgate_register_commands(self, register: Callable[[Command], None]) -> None:
            register(Command("hello", "say hello", run, add_arguments))

    parser = build_parser(PluginHost(extra=[("commands", Commands())]))
    args = parser.parse_args(["hello", "--name", "gateway"])
    assert args.run(args) == 3
    assert capsys.readouterr().out == "hello gateway\n"


def test_shutdown_reaches_every_plugin_even_when_one_fails(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    class Flushes:
        @hookimpl
        async def lockgate_shutdown(self, gateway: Gateway) -> None:
            calls.append(f"flushed {len(gateway.groups())} model(s)")

    class Breaks:
        @hookimpl(tryfirst=True)
        def lockgate_shutdown(self) -> None:
            raise RuntimeError("disk full")

    config = {"models": {"m": {"deployments": [replying("x")]}}}
    server = GatewayServer(config, extra_plugins=[("flushes", Flushes()), ("breaks", Breaks())]).start()
    server.stop()
    assert calls == ["flushed 1 model(s)"]
    assert "lockgate_shutdown of plugin breaks failed: RuntimeError: disk full" in caplog.text
