"""``lockgate usage``: statistics from the database as an operator reads them, as a table or JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from gateway_core.config import UsageConfig
from gateway_core.store.database import Database
from gateway_core.store.migrate import upgrade
from gateway_core.usage.log import UsageLog
from tests.gateway_core.usage.factories import usage_entry

LOCKGATE = [sys.executable, "-m", "gateway_core.cli"]


def lockgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LOCKGATE, *args], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )


@pytest.fixture
async def config_file(tmp_path: Path) -> Path:
    """A configuration whose SQLite database holds some usage: 5 requests 2 hours ago, 4 three days ago."""
    path = tmp_path / "conf" / "lockgate.yaml"
    path.parent.mkdir()
    path.write_text("database:\n  url: sqlite://../var/lockgate.db\n")
    url = f"sqlite://{tmp_path / 'var' / 'lockgate.db'}"
    await upgrade(url)
    database = Database(url)
    await database.start()
    log = UsageLog(database, UsageConfig(), tmp_path / "spool")
    await log.start()
    now = datetime.now(UTC)
    for model, count, ago in (
        ("gpt-4o-mini", 3, timedelta(hours=2)),
        ("claude-haiku", 2, timedelta(hours=2)),
        ("gpt-4o-mini", 4, timedelta(days=3)),
    ):
        for index in range(count):
            log.record_entry(
                usage_entry(now - ago, model=model, latency_ms=100 + index, cost=Decimal("0.25"))
            )
    await log.stop()
    await database.stop()
    return path


async def test_the_table_has_one_row_per_group(config_file: Path) -> None:
    result = lockgate("usage", "--by", "model", "--config", str(config_file))
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "model",
        "requests",
        "errors",
        "prompt",
        "completion",
        "cached",
        "cost_usd",
        "unpriced",
        "p50_ms",
        "p95_ms",
    ]
    assert [row.split()[:2] for row in rows] == [["gpt-4o-mini", "3"], ["claude-haiku", "2"]]  # the last 24 h
    assert rows[0].split()[6] == "0.75000000"


async def test_since_reaches_further_back_and_json_is_for_scripts(config_file: Path) -> None:
    result = lockgate("usage", "--since", "7d", "--interval", "day", "--json", "--config", str(config_file))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert (document["interval"], document["group_by"]) == ("day", "none")
    assert sum(row["requests"] for row in document["data"]) == 9
    assert sum(Decimal(row["cost"]) for row in document["data"]) == Decimal("2.25")
    assert all(row["period"].endswith("T00:00:00+00:00") for row in document["data"])


async def test_an_empty_range_says_so(config_file: Path) -> None:
    result = lockgate("usage", "--since", "2020-01-01", "--until", "2020-02-01", "--config", str(config_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no usage in this range"


async def test_bad_ranges_and_missing_databases_are_reported(config_file: Path, tmp_path: Path) -> None:
    result = lockgate("usage", "--since", "yesterday", "--config", str(config_file))
    assert result.returncode == 1
    assert "neither a duration" in result.stderr
    result = lockgate("usage", "--since", "1d", "--until", "2d", "--config", str(config_file))
    assert result.returncode == 1
    assert "--since must be before --until" in result.stderr
    bare = tmp_path / "bare.yaml"
    bare.write_text("models: {}\n")
    result = lockgate("usage", "--config", str(bare))
    assert result.returncode == 2
    assert "no database section" in result.stderr
