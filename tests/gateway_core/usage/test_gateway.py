"""How the gateway holds its usage log: on with a database, off without one or when disabled, shown in
``/ready``, and flushed by a graceful stop before the database closes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway_core.config import parse_config
from gateway_core.errors import ConfigError
from gateway_core.gateway import Gateway
from gateway_core.store.database import Database
from gateway_core.store.migrate import upgrade
from gateway_core.store.models import UsageRecord
from tests.gateway_core.usage.factories import request_context

MODELS = {"mock": {"deployments": [{"provider": "mock"}]}}


def config(tmp_path: Path, **sections: Any) -> Any:
    return parse_config({"models": MODELS, **sections}, base=tmp_path)


def test_a_database_turns_the_usage_log_on_and_usage_enabled_false_off(tmp_path: Path) -> None:
    database = {"url": f"sqlite://{tmp_path / 'lockgate.db'}"}
    assert Gateway(config(tmp_path)).usage_log is None
    assert Gateway(config(tmp_path, database=database)).usage_log is not None
    assert Gateway(config(tmp_path, database=database, usage={"enabled": False})).usage_log is None
    assert Gateway(config(tmp_path, usage={"enabled": True})).usage_log is None  # nowhere to write


def test_the_spool_folder_is_relative_to_the_config_file(tmp_path: Path) -> None:
    database = {"url": f"sqlite://{tmp_path / 'lockgate.db'}"}
    gateway = Gateway(config(tmp_path, database=database))
    assert gateway.usage_log is not None
    # The folder itself, not a subfolder per database URL: a database that moves keeps its spool.
    assert gateway.usage_log.spool.folder == tmp_path / "var" / "usage-spool"
    custom = Gateway(config(tmp_path, database=database, usage={"spool_dir": "/srv/spool"}))
    assert custom.usage_log is not None and custom.usage_log.spool.folder == Path("/srv/spool")


def test_storing_prompts_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"usage\.store_prompts: .*only false is supported"):
        config(tmp_path, usage={"store_prompts": True})


async def test_a_graceful_stop_stores_the_records_before_the_database_closes(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'lockgate.db'}"
    await upgrade(url)
    gateway = Gateway(config(tmp_path, database={"url": url}, usage={"flush_seconds": 300}))
    await gateway.start()
    assert gateway.usage_log is not None
    for index in range(30):
        gateway.usage_log.record(request_context(f"req-{index}"))
    ready, body = gateway.readiness()
    assert ready
    assert body["usage"]["queued"] == 30 and body["usage"]["pending"] == 30
    await gateway.stop()

    database = Database(url)
    await database.start()
    try:
        assert await database.run(UsageRecord.all().count()) == 30
    finally:
        await database.stop()
