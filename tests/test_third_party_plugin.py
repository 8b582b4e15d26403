"""A third-party plugin package, installed with pip, as an operator would run it.

``tests/third_party_plugin`` is a package of its own (``lockgate-shout``) that registers the ``shout``
provider through the ``lockgate`` entry-point group. It is installed with ``pip install --target``
into a temporary folder, never into the project's environment, and the ``lockgate`` command line runs
in subprocesses that find it through ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway_core.plugins import entry_point_names
from gateway_core.testing import free_port

PACKAGE = Path(__file__).resolve().parent / "third_party_plugin"
KEY = "lg-third-party-0123456789abcdef"
#: The plugins the project itself installs (the test process does not see the package under test).
BUILTIN = entry_point_names()
_script = shutil.which("lockgate", path=str(Path(sys.executable).parent))
LOCKGATE = [_script] if _script else [sys.executable, "-m", "gateway_core.cli"]


def pip_install(source: Path, target: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-input",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert result.returncode == 0, f"pip install {source.name} failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the installed ``lockgate-shout`` distribution (code and entry-point metadata)."""
    target = tmp_path_factory.mktemp("site")
    pip_install(PACKAGE, target)
    assert (target / "lockgate_shout" / "__init__.py").exists()
    return target


def environment(*paths: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCKGATE_LOAD_PLUGINS", "LOCKGATE_CONFIG")}
    pythonpath = [str(path) for path in paths]
    if env.get("PYTHONPATH"):
        pythonpath.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    env.update(extra)
    return env


def lockgate(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOCKGATE, *args], capture_output=True, text=True, timeout=60, env=env, cwd=cwd)


def write_config(
    path: Path, *, port: int = 0, shout_plugin: str = "prefix: 'HEY: '", options: str = "{}"
) -> Path:
    path.write_text(
        textwrap.dedent(
            f"""\
            server: {{host: 127.0.0.1, port: {port}, graceful_timeout: 5}}
            models:
              loud:
                deployments:
                  - provider: shout
                    options: {options}
              quiet:
                deployments:
                  - provider: mock
            plugins:
              config_keys:
                keys: [{{name: third-party, key: {KEY}}}]
              lockgate_shout: {{{shout_plugin}}}
            """
        )
    )
    return path


# --- discovered ----------------------------------------------------------------------------------


def test_the_plugin_is_found_through_its_entry_point(site: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "gw.yaml")
    result = lockgate("plugins", "--json", "--config", str(config), env=environment(site), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plugins = {plugin["name"]: plugin for plugin in json.loads(result.stdout)}
    assert plugins["lockgate_shout"] == {
        "name": "lockgate_shout",
        "version": "0.3.1",
        "hooks": ["lockgate_register_providers", "lockgate_startup"],
    }
    assert sorted(plugins) == sorted([*BUILTIN, "lockgate_shout"])
    table = lockgate("plugins", "--config", str(config), env=environment(site), cwd=tmp_path).stdout
    assert any(line.split()[:2] == ["lockgate_shout", "0.3.1"] for line in table.splitlines())


def test_without_the_package_nothing_is_found(tmp_path: Path) -> None:
    result = lockgate("plugins", "--json", "--all", env=environment(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "lockgate_shout" not in {plugin["name"] for plugin in json.loads(result.stdout)}


# --- serving -------------------------------------------------------------------------------------


@pytest.fixture
def served(site: Path, tmp_path: Path) -> Iterator[str]:
    """``lockgate serve`` with the plugin, in a subprocess on a free port; yields its base URL."""
    port = free_port()
    config = write_config(tmp_path / "gw.yaml", port=port, options="{exclamations: 2}")
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [*LOCKGATE, "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=environment(site),
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "lockgate serve exited:\n" + (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "lockgate serve was not ready within 30 s"
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def test_the_served_gateway_lists_the_plugin(served: str) -> None:
    response = httpx.get(f"{served}/-/plugins", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert response.status_code == 200
    plugins = {plugin["name"]: plugin for plugin in response.json()}
    assert plugins["lockgate_shout"]["version"] == "0.3.1"
    assert plugins["lockgate_shout"]["hooks"] == ["lockgate_register_providers", "lockgate_startup"]


def test_a_chat_request_is_answered_by_the_plugin(served: str) -> None:
    with openai.OpenAI(base_url=f"{served}/v1", api_key=KEY, max_retries=0, timeout=10) as client:
        answer = client.chat.completions.create(
            model="loud", messages=[{"role": "user", "content": "hello there"}]
        )
        assert answer.choices[0].message.content == "HEY: HELLO THERE!!"
        assert answer.usage is not None and answer.usage.completion_tokens == 3
        stream = client.chat.completions.create(
            model="loud",
            messages=[{"role": "user", "content": "stream this please"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        assert text == "HEY: STREAM THIS PLEASE!!"
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 3 + 4
        # The built-in providers keep working next to it.
        other = client.chat.completions.create(model="quiet", messages=[{"role": "user", "content": "hi"}])
        assert other.choices[0].message.content == "hi"


# --- configured ----------------------------------------------------------------------------------


def test_a_bad_deployment_option_fails_check_config_naming_file_and_key(site: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "gw.yaml", options="{exclamations: 99}")
    result = lockgate("check-config", "--config", str(config), env=environment(site), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{config}: invalid configuration" in result.stderr
    assert (
        "models.loud.deployments[0].options.exclamations: Input should be less than or equal to 10"
        in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_a_bad_plugin_option_fails_start_up_naming_file_and_key(site: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "gw.yaml", port=free_port(), shout_plugin="prefix: 'HEY', volume: 11")
    result = lockgate("serve", "--config", str(config), env=environment(site), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{config}: invalid configuration" in result.stderr
    assert "plugins.lockgate_shout.volume: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


# --- disabled and narrowed -----------------------------------------------------------------------

# Runs the command line in-process, then tells whether the plugin's module was ever imported.
IMPORT_PROBE = """
import sys
from gateway_core.cli import main
code = main(sys.argv[1:])
print("imported" if "lockgate_shout" in sys.modules else "not imported", code, file=sys.stderr)
"""


def probe(*args: str, env: dict[str, str], cwd: Path) -> tuple[str, list[str]]:
    """Run ``lockgate ARGS`` in-process; return the import verdict and the listed plugins."""
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
    )
    verdict = result.stderr.strip().splitlines()[-1]
    listed = [plugin["name"] for plugin in json.loads(result.stdout)] if result.stdout.strip() else []
    return verdict, listed


def test_a_disabled_plugin_is_never_imported(site: Path, tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(
        "models:\n  quiet: {deployments: [{provider: mock}]}\nplugins:\n  lockgate_shout: {enabled: false}\n"
    )
    verdict, listed = probe("plugins", "--json", "--config", str(config), env=environment(site), cwd=tmp_path)
    assert verdict == "not imported 0"
    assert listed == BUILTIN
    # Its provider is gone with it: a deployment that needs it is a configuration error.
    config = write_config(tmp_path / "gw.yaml", shout_plugin="enabled: false")
    result = lockgate("check-config", "--config", str(config), env=environment(site), cwd=tmp_path)
    assert result.returncode == 2
    assert "models.loud.deployments[0].provider: unknown provider 'shout'" in result.stderr


def test_an_enabled_plugin_is_imported(site: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "gw.yaml")
    verdict, listed = probe("plugins", "--json", "--config", str(config), env=environment(site), cwd=tmp_path)
    assert verdict == "imported 0"
    assert "lockgate_shout" in listed


def test_load_plugins_variable_narrows_loading(site: Path, tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("models:\n  quiet: {deployments: [{provider: mock}]}\n")
    only_builtin = environment(site, LOCKGATE_LOAD_PLUGINS=",".join(BUILTIN))
    verdict, listed = probe("plugins", "--json", "--config", str(config), env=only_builtin, cwd=tmp_path)
    assert (verdict, listed) == ("not imported 0", BUILTIN)
    wanted = ["config_routes", "lockgate_shout", "mock", "round_robin"]
    narrowed = environment(site, LOCKGATE_LOAD_PLUGINS=",".join(wanted))
    verdict, listed = probe("plugins", "--json", "--config", str(config), env=narrowed, cwd=tmp_path)
    assert (verdict, listed) == ("imported 0", wanted)


# --- rejected ------------------------------------------------------------------------------------


def test_a_plugin_implementing_an_unknown_hook_is_rejected_at_start_up(site: Path, tmp_path: Path) -> None:
    source = tmp_path / "typo-plugin"
    (source / "lockgate_typo").mkdir(parents=True)
    (source / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [build-system]
            requires = ["flit_core>=3.4,<4"]
            build-backend = "flit_core.buildapi"

            [project]
            name = "lockgate-typo"
            version = "1.0.0"
            description = "Implements lockgate_register_provider, which is not a hook."

            [project.entry-points.lockgate]
            lockgate_typo = "lockgate_typo"
            """
        )
    )
    (source / "lockgate_typo" / "__init__.py").write_text(
        textwrap.dedent(
            """\
            from gateway_core import hookimpl


            @hookimpl
            def lockgate_register_provider(register):
                pass
            """
        )
    )
    typo_site = tmp_path / "typo-site"
    pip_install(source, typo_site)
    config = write_config(tmp_path / "gw.yaml", port=free_port())
    expected = "lockgate: plugin 'lockgate_typo' is invalid: unknown hook 'lockgate_register_provider'"
    for command in ("check-config", "serve"):
        result = lockgate(command, "--config", str(config), env=environment(site, typo_site), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(expected)
        assert result.stderr.count(expected) == 1
        assert "Traceback" not in result.stderr
