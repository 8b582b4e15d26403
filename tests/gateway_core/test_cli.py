"""The ``lockgate`` command line as an operator uses it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LOCKGATE = [sys.executable, "-m", "gateway_core.cli"]


def lockgate(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LOCKGATE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "models:\n"
        "  chat:\n"
        "    deployments:\n"
        "      - provider: mock\n"
        "plugins:\n"
        "  config_keys:\n"
        "    keys:\n"
        "      - name: ci\n"
        f"        sha256: {'a' * 64}\n"
    )
    return path


def test_check_config_accepts_a_valid_file(config_file: Path) -> None:
    result = lockgate("check-config", "--config", str(config_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{config_file}: OK (1 model(s), 1 deployment(s))"


def test_check_config_names_the_file_and_the_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "models:\n  chat:\n    deployments:\n      - provider: mock\n        options: {chunks: 0}\n"
    )
    result = lockgate("check-config", "--config", str(path))
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert "models.chat.deployments[0].options.chunks" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_rejects_an_unknown_provider(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("models:\n  chat:\n    deployments:\n      - provider: nosuch\n")
    result = lockgate("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "models.chat.deployments[0].provider: unknown provider 'nosuch'" in result.stderr


def test_config_path_comes_from_the_environment(config_file: Path) -> None:
    result = lockgate("check-config", env={"LOCKGATE_CONFIG": str(config_file)})
    assert result.returncode == 0, result.stderr


def test_plugins_lists_names_versions_and_hooks(config_file: Path) -> None:
    result = lockgate("plugins", "--json", "--config", str(config_file))
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["openai"]["hooks"] == ["lockgate_register_providers"]
    assert plugins["openai"]["version"]
    table = lockgate("plugins", "--config", str(config_file)).stdout
    assert any(line.split()[0] == "round_robin" for line in table.splitlines())


def test_plugins_respects_disabled_plugins(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("plugins:\n  openai: {enabled: false}\n")
    names = {p["name"] for p in json.loads(lockgate("plugins", "--json", "--config", str(path)).stdout)}
    assert "openai" not in names
    assert "mock" in names


def test_keys_generate_prints_a_key_and_its_digest() -> None:
    result = lockgate("keys", "generate")
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines())
    key, digest = lines["key"].strip(), lines["sha256"].strip()
    assert key.startswith("lg-") and len(key) > 40
    assert hashlib.sha256(key.encode()).hexdigest() == digest
    assert "shown once" in result.stderr
    assert lockgate("keys", "generate", "--quiet").stdout.strip() != key


def test_keys_hash_reads_stdin() -> None:
    result = lockgate("keys", "hash", "-", stdin="lg-some-key\n")
    assert result.stdout.strip() == hashlib.sha256(b"lg-some-key").hexdigest()
