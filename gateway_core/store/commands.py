"""``lockgate db ...``: the database commands of the command line."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from gateway_core.config import redact_url
from gateway_core.errors import ConfigError


def add_db_commands(
    sub: Any, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]
) -> None:
    """Add ``db upgrade`` to the ``lockgate`` parser's sub-commands."""
    db = sub.add_parser("db", help="database schema (migrations)")
    commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    upgrade = with_config(
        commands.add_parser("upgrade", help="apply the schema migrations the database lacks (idempotent)")
    )
    upgrade.set_defaults(run=cmd_db_upgrade)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    import asyncio

    from gateway_core.config import load_config
    from gateway_core.server import config_path
    from gateway_core.store.migrate import upgrade

    config = load_config(config_path(args.config))
    url = config.database_url()
    if url is None:
        raise ConfigError(f"{config.source}: no database section: nothing to upgrade")
    try:
        applied = asyncio.run(upgrade(url))
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"database {redact_url(url)}: upgrade failed: {type(exc).__name__}: {exc}"
        ) from None
    if applied:
        print(f"database {redact_url(url)}: applied {', '.join(applied)}")
    else:
        print(f"database {redact_url(url)}: up to date")
    return 0
