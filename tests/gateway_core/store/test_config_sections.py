"""The database, secrets, redis and admin sections of the configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway_core import ConfigError, load_config, parse_config
from gateway_core.config import redact_url


def test_the_sections_are_optional() -> None:
    config = parse_config({})
    assert config.database is None and config.secrets is None and config.redis is None
    assert config.database_url() is None
    assert config.admin.jwt_secret is None
    assert (config.admin.access_token_minutes, config.admin.refresh_token_days) == (15, 7)


def test_a_relative_sqlite_path_resolves_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "lockgate.yaml"
    path.write_text("database:\n  url: sqlite://../var/lockgate.db\n")
    config = load_config(path)
    assert config.base_dir == tmp_path / "conf"
    assert config.database_url() == f"sqlite://{tmp_path / 'var' / 'lockgate.db'}"


@pytest.mark.parametrize(
    "url", ["sqlite:///srv/lockgate.db", "sqlite://:memory:", "postgres://u:p@db:5432/lockgate"]
)
def test_absolute_memory_and_postgres_urls_are_kept(url: str) -> None:
    assert parse_config({"database": {"url": url}}).database_url() == url


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"url": "mysql://db/lockgate"}, "must start with sqlite:// or postgres://"),
        ({"url": "sqlite://"}, "names no SQLite file"),
        ({"url": "sqlite://x.db", "pool_min": 5, "pool_max": 2}, "pool_min must not exceed pool_max"),
        ({"url": "sqlite://x.db", "pool": 3}, "database.pool: unknown key"),
    ],
)
def test_bad_database_sections_are_refused(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"database": section})


def test_redis_urls_are_checked() -> None:
    assert parse_config({"redis": {"url": "rediss://cache:6380/1"}}).redis is not None
    with pytest.raises(ConfigError, match=r"redis.url: .*must start with redis://"):
        parse_config({"redis": {"url": "http://cache"}})


def test_passwords_in_urls_stay_out_of_reprs_and_messages() -> None:
    config = parse_config(
        {
            "database": {"url": "postgres://lockgate:s3cret@db:5432/x"},
            "redis": {"url": "redis://:r3dis@r:6379"},
        }
    )
    assert "s3cret" not in repr(config) and "r3dis" not in repr(config)
    assert redact_url("postgres://lockgate:s3cret@db:5432/x") == "postgres://lockgate:***@db:5432/x"
    assert redact_url("sqlite:///srv/lockgate.db") == "sqlite:///srv/lockgate.db"
