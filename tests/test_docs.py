"""The plugin documentation: every hook has a section, every example runs, every hook has a test.

Each ``## lockgate_NAME(args)`` section of ``docs/plugins/hooks.md`` holds a complete plugin module (the
first python block) and, optionally, the configuration that uses it (the first yaml block). The tests
below load every example as a module, register it into a real gateway with that configuration and
check that it behaves as its section says. ``docs/plugins/writing.md`` is held to the same: its plugin
modules load and register, its test module passes under pytest, and its excerpts are the real code.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway_core import ConfigError, Gateway, NoOptions, hookspecs, parse_config
from gateway_core.cli import build_parser
from gateway_core.plugins import PluginHost
from gateway_core.testing import DEFAULT_TEST_KEY, GatewayServer
from tests.fakes import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent
HOOKS_DOC = ROOT / "docs" / "plugins" / "hooks.md"
WRITING_DOC = ROOT / "docs" / "plugins" / "writing.md"
TESTS = ROOT / "tests"
SHOUT_PACKAGE = TESTS / "third_party_plugin"

HOOKS = sorted(
    name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("lockgate_")
)


@dataclass(frozen=True)
class Section:
    hook: str
    args: list[str]
    code: str
    config: dict[str, Any] | None


def parse_sections(text: str) -> dict[str, Section]:
    sections = {}
    parts = re.split(r"^## (lockgate_\w+)\(([^)]*)\)[ \t]*$", text, flags=re.MULTILINE)
    for hook, args, body in zip(parts[1::3], parts[2::3], parts[3::3], strict=True):
        code = re.search(r"^```python\n(.*?)^```", body, flags=re.MULTILINE | re.DOTALL)
        config = re.search(r"^```yaml\n(.*?)^```", body, flags=re.MULTILINE | re.DOTALL)
        sections[hook] = Section(
            hook=hook,
            args=[arg.strip() for arg in args.split(",") if arg.strip()],
            code=code.group(1) if code else "",
            config=yaml.safe_load(config.group(1)) if config else None,
        )
    return sections


SECTIONS = parse_sections(HOOKS_DOC.read_text(encoding="utf-8"))


# --- every hook is documented, and only real hooks are --------------------------------------------


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_with_its_arguments(hook: str) -> None:
    assert hook in SECTIONS, f"docs/plugins/hooks.md has no section '## {hook}(...)'"
    spec_args = list(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert SECTIONS[hook].args == spec_args, f"the heading of {hook} must list {spec_args}"


def test_every_documented_hook_exists() -> None:
    assert sorted(SECTIONS) == HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_section_has_a_python_example(hook: str) -> None:
    section = SECTIONS.get(hook)
    assert section is not None and "@hookimpl" in section.code, f"{hook} has no python example"


# --- every hook has a test of its own ----------------------------------------------------------------


def _test_sources() -> dict[Path, str]:
    own = Path(__file__).resolve()
    return {
        path: path.read_text(encoding="utf-8")
        for path in sorted(TESTS.rglob("test_*.py"))
        if path.resolve() != own
    }


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook: str) -> None:
    """A test module other than this one mentions the hook (this one only runs the doc examples)."""
    pattern = re.compile(rf"\b{hook}\b")
    mentioned = [path for path, text in _test_sources().items() if pattern.search(text)]
    assert mentioned, f"no test under tests/ exercises the hook {hook}"


# --- the examples run ------------------------------------------------------------------------------


@dataclass
class Example:
    module: ModuleType
    name: str
    section: Section


@pytest.fixture
def load_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Example]:
    """Load the example of a hook's section as a module, as an installed plugin would be imported.

    The working directory is the test's temporary folder: relative paths of the examples land there.
    """
    monkeypatch.chdir(tmp_path)

    def load(hook: str) -> Example:
        section = SECTIONS[hook]
        module = import_code(section.code, f"hooks_example_{hook}", tmp_path, monkeypatch)
        # Examples with options name themselves (NAME) so the configuration can address them.
        return Example(module, getattr(module, "NAME", module.__name__), section)

    return load


def import_code(code: str, module_name: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    path = folder / f"{module_name}.py"
    path.write_text(code, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, module_name, module)
    spec.loader.exec_module(module)
    return module


Serve = Callable[..., tuple[GatewayServer, Example]]


@pytest.fixture
def serve_example(load_example: Callable[[str], Example]) -> Iterator[Serve]:
    """Serve the gateway configured by a section's yaml block with the section's example plugin."""
    servers: list[GatewayServer] = []

    def serve(hook: str, config: dict[str, Any] | None = None) -> tuple[GatewayServer, Example]:
        example = load_example(hook)
        data = config if config is not None else (example.section.config or {})
        server = GatewayServer(data, extra_plugins=[(example.name, example.module)])
        servers.append(server)
        return server.start(), example

    yield serve
    for server in servers:
        server.stop()


def sdk(server: GatewayServer, api_key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.base_url, api_key=api_key or server.api_key, max_retries=0, timeout=10
    )


def ask(client: openai.OpenAI, model: str, text: str = "Hello there") -> str:
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
    return answer.choices[0].message.content or ""


@pytest.mark.parametrize("hook", HOOKS)
def test_example_registers_into_a_real_gateway(hook: str, serve_example: Serve, tmp_path: Path) -> None:
    if hook == "lockgate_authenticate":
        (tmp_path / "keys.txt").write_text("")  # the key file its configuration names
    server, example = serve_example(hook)
    described = {plugin["name"]: plugin for plugin in server.gateway.plugins.describe()}
    assert hook in described[example.name]["hooks"]
    with httpx.Client(base_url=server.url, timeout=10) as http:
        listed = http.get("/-/plugins", headers={"Authorization": f"Bearer {server.api_key}"}).json()
    assert example.name in {plugin["name"] for plugin in listed}


def test_example_lockgate_register_providers_answers_plain_and_streamed(serve_example: Serve) -> None:
    server, _ = serve_example("lockgate_register_providers")
    with sdk(server) as client:
        assert ask(client, "canned") == "Hello from a plugin"
        stream = client.chat.completions.create(
            model="canned", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        chunks = list(stream)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == "Hello from a plugin"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_example_lockgate_register_providers_options_are_validated(
    load_example: Callable[[str], Example],
) -> None:
    example = load_example("lockgate_register_providers")
    config = parse_config(
        {"models": {"canned": {"deployments": [{"provider": "canned", "options": {"answer": "x"}}]}}},
        source="gw.yaml",
    )
    with pytest.raises(
        ConfigError, match=r"gw.yaml: .*\n  models.canned.deployments\[0\].options.answer: unknown key"
    ):
        Gateway(config, extra_plugins=[(example.name, example.module)])


def test_example_lockgate_register_balancers_prefers_the_idle_first_deployment(serve_example: Serve) -> None:
    server, _ = serve_example("lockgate_register_balancers")
    with sdk(server) as client:
        answers = [ask(client, "assistant") for _ in range(3)]
    assert answers == ["primary"] * 3  # round_robin would alternate


def test_example_lockgate_register_dlp_filters_pseudonymizes(serve_example: Serve) -> None:
    server, example = serve_example("lockgate_register_dlp_filters")
    with sdk(server) as client:
        # The mock model echoes what it received: the placeholder, restored on the way back.
        assert ask(client, "assistant", "Promote EMP-123456 today") == "Promote EMP-123456 today"
    config = example.section.config or {}
    redacting = {**config, "dlp": {**config["dlp"], "entities": {"EMPLOYEE_ID": "redact"}}}
    server, _ = serve_example("lockgate_register_dlp_filters", redacting)
    with sdk(server) as client:
        assert ask(client, "assistant", "Promote EMP-123456 today") == "Promote [EMPLOYEE_ID] today"
    employee_numbers = example.module.EmployeeNumbers(NoOptions())
    assert employee_numbers.holdback("Promote EMP-12", frozenset()) == len("Promote ")
    assert employee_numbers.holdback("Promote EMP-123456 now", frozenset()) == len("Promote EMP-123456 now")


def test_example_lockgate_register_routes_needs_a_key(serve_example: Serve) -> None:
    server, _ = serve_example("lockgate_register_routes")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        ok = http.get("/-/whoami", headers={"Authorization": f"Bearer {server.api_key}"})
        anonymous = http.get("/-/whoami")
    assert ok.json() == {"name": "test", "key_id": "config_keys:test"}
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "missing_api_key"


def test_example_lockgate_register_commands_adds_a_subcommand(
    load_example: Callable[[str], Example], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = load_example("lockgate_register_commands")
    config = tmp_path / "gw.yaml"
    config.write_text(
        "models:\n"
        "  mock-echo: {deployments: [{provider: mock}]}\n"
        "  pair: {deployments: [{provider: mock}, {provider: openai, base_url: 'http://127.0.0.1:9/v1'}]}\n"
    )
    parser = build_parser(PluginHost(extra=[(example.name, example.module)]))
    args = parser.parse_args(["list-models", "--config", str(config)])
    assert args.run(args) == 0
    assert capsys.readouterr().out.splitlines() == ["mock-echo: mock", "pair: mock, openai"]


def test_example_lockgate_startup_keeps_validated_options(serve_example: Serve) -> None:
    server, _ = serve_example("lockgate_startup")
    price = server.gateway.plugin_state["prices"]["mock-echo"]
    assert (price.input_per_million, price.output_per_million) == (0.15, 0.60)


async def test_example_lockgate_startup_rejects_a_price_for_an_unknown_model(
    load_example: Callable[[str], Example],
) -> None:
    example = load_example("lockgate_startup")
    data = dict(example.section.config)
    data["plugins"] = {"prices": {"models": {"nope": {"input_per_million": 1, "output_per_million": 2}}}}
    gateway = Gateway(parse_config(data, source="gw.yaml"), extra_plugins=[(example.name, example.module)])
    with pytest.raises(ConfigError, match=r"^gw.yaml: plugins.prices.models.nope: no such model$"):
        await gateway.start()
    data["plugins"] = {
        "prices": {"models": {"mock-echo": {"input_per_million": -1, "output_per_million": 2}}}
    }
    gateway = Gateway(parse_config(data, source="gw.yaml"), extra_plugins=[(example.name, example.module)])
    with pytest.raises(ConfigError, match=r"plugins.prices.models.mock-echo.input_per_million: "):
        await gateway.start()


def test_example_lockgate_shutdown_writes_its_counts(serve_example: Serve, tmp_path: Path) -> None:
    server, _ = serve_example("lockgate_shutdown")
    with sdk(server) as client:
        ask(client, "mock-echo")
        ask(client, "mock-echo")
    assert not (tmp_path / "request-counts.json").exists()
    server.stop()
    assert json.loads((tmp_path / "request-counts.json").read_text()) == {"config_keys:test": 2}


def test_example_lockgate_authenticate_accepts_keys_from_the_file(
    serve_example: Serve, tmp_path: Path
) -> None:
    alice_key = "lg-alice-0123456789abcdef0123"
    digest = hashlib.sha256(alice_key.encode()).hexdigest()
    (tmp_path / "keys.txt").write_text(f"alice {digest}\n")
    server, _ = serve_example("lockgate_authenticate")
    with sdk(server, alice_key) as alice:
        assert ask(alice, "mock-echo", "from alice") == "from alice"
    with sdk(server, DEFAULT_TEST_KEY) as other:  # the config_keys plugin still answers for its keys
        assert ask(other, "mock-echo", "from test") == "from test"
    with sdk(server, "lg-nobody-0123456789abcdef0123") as nobody, pytest.raises(openai.AuthenticationError):
        ask(nobody, "mock-echo")


async def test_example_lockgate_authenticate_names_a_missing_key_file(
    load_example: Callable[[str], Example],
) -> None:
    example = load_example("lockgate_authenticate")
    config = parse_config({"plugins": {"key_file": {"path": "missing.txt"}}}, source="gw.yaml")
    gateway = Gateway(config, extra_plugins=[(example.name, example.module)])
    with pytest.raises(ConfigError, match=r"^gw.yaml: plugins.key_file.path: No such file"):
        await gateway.start()


def test_example_lockgate_route_serves_unknown_names_with_the_default(serve_example: Serve) -> None:
    server, _ = serve_example("lockgate_route")
    with sdk(server) as client:
        assert ask(client, "gpt-imaginary") == "answered by the house model"
        assert ask(client, "house-model") == "answered by the house model"


def test_example_lockgate_policy_check_limits_requests_per_minute(serve_example: Serve) -> None:
    server, _ = serve_example("lockgate_policy_check")
    answered, rejected = 0, None
    with sdk(server) as client:
        # Two per minute: the third request is refused, the fourth if a new minute began in between.
        for _ in range(4):
            try:
                ask(client, "mock-echo")
            except openai.RateLimitError as exc:
                rejected = exc
                break
            answered += 1
    assert rejected is not None, "the rate limit never applied"
    assert answered in (2, 3)
    assert rejected.code == "rate_limit_exceeded"
    assert 1 <= int(rejected.response.headers["retry-after"]) <= 60


def test_example_lockgate_policy_settle_enforces_the_token_budget(serve_example: Serve) -> None:
    server, _ = serve_example("lockgate_policy_settle")
    with sdk(server) as client:
        # Six prompt and six answer words: twelve tokens, over the budget of ten.
        assert ask(client, "mock-echo", "one two three four five six") == "one two three four five six"
        # Settlement runs in the background right after the answer; allow it one more request.
        rejected = None
        for _ in range(2):
            try:
                ask(client, "mock-echo")
            except openai.RateLimitError as exc:
                rejected = exc
                break
    assert rejected is not None, "the budget was not enforced"
    assert rejected.code == "insufficient_quota"


# --- writing.md ----------------------------------------------------------------------------------

WRITING_BLOCKS = re.findall(
    r"^```python\n(.*?)^```", WRITING_DOC.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL
)
#: Complete test modules, complete plugin modules, and excerpts of the lockgate_shout plugin.
WRITING_TESTS = [block for block in WRITING_BLOCKS if "def test_" in block]
WRITING_PLUGINS = [
    block for block in WRITING_BLOCKS if block not in WRITING_TESTS and "from gateway_core import" in block
]
WRITING_EXCERPTS = [block for block in WRITING_BLOCKS if block not in WRITING_TESTS + WRITING_PLUGINS]


def test_writing_has_each_kind_of_example() -> None:
    assert WRITING_TESTS and WRITING_PLUGINS and WRITING_EXCERPTS


def block_id(code: str) -> str:
    return code.strip().splitlines()[0][:48]


@pytest.mark.parametrize("code", WRITING_BLOCKS, ids=block_id)
def test_writing_example_is_valid_python(code: str) -> None:
    compile(code, "docs/plugins/writing.md", "exec")


@pytest.mark.parametrize("excerpt", WRITING_EXCERPTS, ids=block_id)
def test_writing_excerpt_is_the_real_plugin_code(excerpt: str) -> None:
    source = (SHOUT_PACKAGE / "lockgate_shout" / "__init__.py").read_text(encoding="utf-8")
    for chunk in excerpt.strip().split("\n\n\n"):
        assert chunk in source, f"not in lockgate_shout:\n{chunk}"


@pytest.mark.parametrize("index", range(len(WRITING_PLUGINS)))
def test_writing_plugin_example_registers_into_a_gateway(
    index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = import_code(WRITING_PLUGINS[index], f"writing_example_{index}", tmp_path, monkeypatch)
    gateway = Gateway(parse_config({}), extra_plugins=[(module.__name__, module)])
    hooks = {plugin["name"]: plugin["hooks"] for plugin in gateway.plugins.describe()}[module.__name__]
    implemented = [name for name in HOOKS if hasattr(module, name)]
    assert hooks == implemented != []


def test_writing_provider_example_calls_its_upstream(
    fake: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (code,) = [block for block in WRITING_PLUGINS if "class InhouseProvider" in block]
    module = import_code(code, "inhouse_example", tmp_path, monkeypatch)
    deployment = {
        "provider": "inhouse",
        "base_url": fake.base_url,
        "api_key": fake.api_key,
        "model": "gpt-4o-mini",
        "options": {"system_prompt": "Answer briefly."},
    }
    config = {"models": {"inhouse-chat": {"deployments": [deployment]}}}
    with GatewayServer(config, extra_plugins=[("inhouse_example", module)]) as server, sdk(server) as client:
        assert ask(client, "inhouse-chat", "hello") == "Echo: hello"
        with pytest.raises(openai.BadRequestError, match="cannot stream"):
            client.chat.completions.create(
                model="inhouse-chat", messages=[{"role": "user", "content": "hi"}], stream=True
            )
    sent = fake.requests_to("/v1/chat/completions")[-1]
    assert sent.headers["authorization"] == f"Bearer {fake.api_key}"
    assert sent.json["model"] == "gpt-4o-mini"
    assert sent.json["messages"][0] == {"role": "system", "content": "Answer briefly."}


def test_writing_provider_example_needs_a_base_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (code,) = [block for block in WRITING_PLUGINS if "class InhouseProvider" in block]
    module = import_code(code, "inhouse_example", tmp_path, monkeypatch)
    deployment = {"provider": "inhouse", "api_key": "sk-inhouse-0123456789"}
    config = parse_config({"models": {"inhouse-chat": {"deployments": [deployment]}}}, source="gw.yaml")
    with pytest.raises(
        ConfigError, match=r"^gw.yaml: models.inhouse-chat.deployments\[0\]: .*needs a base_url"
    ):
        Gateway(config, extra_plugins=[("inhouse_example", module)])


@pytest.mark.parametrize("code", WRITING_TESTS, ids=block_id)
def test_writing_test_example_passes_under_pytest(code: str, tmp_path: Path) -> None:
    """The documented tests pass in a project of their own, with only Lockgate's pytest plugin."""
    (tmp_path / "test_documented.py").write_text(code, encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\nasyncio_default_fixture_loop_scope = "function"\n', encoding="utf-8"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "LOCKGATE_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SHOUT_PACKAGE), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", "test_documented.py"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{code.count('def test_')} passed" in result.stdout
