"""The ``lockgate`` command line."""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from gateway_core.config import GatewayConfig, load_config
from gateway_core.errors import ConfigError
from gateway_core.plugins import PluginHost
from gateway_core.server import CONFIG_ENV, DEFAULT_CONFIG, config_path
from gateway_core.store.keys import KEY_PREFIX, generate_key

if TYPE_CHECKING:
    from gateway_core.store.database import Database

__all__ = ["KEY_PREFIX", "build_parser", "generate_key", "main"]


def _load(args: argparse.Namespace) -> GatewayConfig:
    return load_config(config_path(args.config))


def _gateway(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from gateway_core.gateway import Gateway

    return Gateway(_load(args))


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway_core.logs import configure_logging
    from gateway_core.server import serve

    config = _load(args)
    overrides = {
        k: v
        for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers))
        if v is not None
    }
    if overrides:
        config.server = config.server.model_copy(update=overrides)
    configure_logging(config.logging)
    from gateway_core.gateway import Gateway

    Gateway(config)  # validate everything (plugins, deployments) before binding the port
    serve(config, config_path(args.config))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    import asyncio

    gateway = _gateway(args)

    async def start_and_stop() -> None:
        # Plugins validate their own options in lockgate_startup: run it, then shut down cleanly.
        await gateway.start()
        await gateway.stop()

    asyncio.run(start_and_stop())
    groups = gateway.groups()
    deployments = sum(len(group.deployments) for group in groups)
    print(f"{gateway.config.source}: OK ({len(groups)} model(s), {deployments} deployment(s))")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    if args.config or not args.all:
        try:
            host = _gateway(args).plugins
        except ConfigError:
            if args.config:
                raise
            host = PluginHost()
    else:
        host = PluginHost()
    described = host.describe()
    if args.json:
        print(orjson.dumps(described, option=orjson.OPT_INDENT_2).decode())
        return 0
    width = max((len(p["name"]) for p in described), default=4)
    for plugin in described:
        print(f"{plugin['name']:<{width}}  {plugin['version'] or '-':<8}  {', '.join(plugin['hooks'])}")
    return 0


def cmd_keys_generate(args: argparse.Namespace) -> int:
    key = generate_key()
    if args.quiet:
        print(key)
        return 0
    print(f"key:    {key}\nsha256: {hashlib.sha256(key.encode()).hexdigest()}")
    print(
        "The key is shown once: store the sha256 line in the configuration and hand out the key.",
        file=sys.stderr,
    )
    return 0


def cmd_keys_hash(args: argparse.Namespace) -> int:
    key = sys.stdin.readline().strip() if args.key == "-" else args.key
    print(hashlib.sha256(key.encode()).hexdigest())
    return 0


# --- keys and users in the database ---------------------------------------------------------------------


class _Refused(Exception):
    """A command cannot do what was asked; the message says why (exit status 1)."""


def _with_database(
    args: argparse.Namespace,
    work: Callable[[GatewayConfig, Database], Awaitable[int]],
    holds: str = "keys and users",
) -> int:
    """Open the configuration's database, run ``work`` with it active, close it.

    The commands report problems themselves: the gateway's log lines about the database (written for a
    server that keeps running) are silenced.
    """
    import asyncio
    import logging

    from gateway_core.store.database import Database, DatabaseUnavailable

    config = _load(args)
    database = Database.from_config(config)
    if database is None:
        raise ConfigError(f"{config.source}: no database section: {holds} live in the database")
    logging.getLogger("lockgate").setLevel(logging.CRITICAL)

    async def run() -> int:
        await database.start()
        try:
            if not database.healthy:
                raise DatabaseUnavailable(f"database {database.display_url} is unreachable")
            with database.activate():
                return await work(config, database)
        finally:
            await database.stop()

    try:
        return asyncio.run(run())
    except (_Refused, LookupError, ValueError, DatabaseUnavailable) as exc:
        print(f"lockgate: {exc}", file=sys.stderr)
        return 1


def _read_password(args: argparse.Namespace) -> str:
    """The new password: one line of standard input, or typed twice at a terminal (never echoed)."""
    import getpass

    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise _Refused("no terminal to ask for the password: pass it on standard input with --password-stdin")
    password = getpass.getpass("Password: ")
    if getpass.getpass("Repeat the password: ") != password:
        raise _Refused("the passwords differ")
    return password


def cmd_users_create_admin(args: argparse.Namespace) -> int:
    from gateway_core.store import users
    from gateway_core.store.models import Role

    try:
        email = users.normalize_email(args.email)
        password = _read_password(args)
        users.check_password_strength(password)
    except (_Refused, ValueError) as exc:
        print(f"lockgate: {exc}", file=sys.stderr)
        return 1

    async def work(config: GatewayConfig, database: Database) -> int:
        user = await users.create_user(email, password, Role.ADMIN, args.org)
        org = f", organization {args.org}" if args.org else ""
        print(f"created admin {user.email} (id {user.id}{org})")
        return 0

    return _with_database(args, work)


def cmd_keys_create(args: argparse.Namespace) -> int:
    from gateway_core.store import keys, users

    try:
        expires_at = keys.parse_expires(args.expires) if args.expires else None
    except ValueError as exc:
        print(f"lockgate: --expires: {exc}", file=sys.stderr)
        return 1
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models is not None else None

    async def work(config: GatewayConfig, database: Database) -> int:
        owner = await users.find_user(args.owner) if args.owner else None
        org = await users.find_organization(args.org) if args.org else None
        record, secret = await keys.create_key(
            args.name, user=owner, org=org, models=models, expires_at=expires_at
        )
        if args.json:
            print(
                orjson.dumps({"key": secret, **keys.key_summary(record)}, option=orjson.OPT_INDENT_2).decode()
            )
        else:
            print(f"key:    {secret}\nid:     {record.id}\nprefix: {record.prefix}")
        print("The key is shown once and only its digest is stored: hand it out now.", file=sys.stderr)
        return 0

    return _with_database(args, work)


def _when(value: str | None) -> str:
    """An ISO timestamp as ``YYYY-MM-DD HH:MM`` (UTC), ``-`` for none."""
    if value is None:
        return "-"
    from datetime import UTC, datetime

    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def cmd_keys_list(args: argparse.Namespace) -> int:
    from gateway_core.store import keys

    async def work(config: GatewayConfig, database: Database) -> int:
        listed = [keys.key_summary(key) for key in await keys.list_keys()]
        if args.json:
            print(orjson.dumps(listed, option=orjson.OPT_INDENT_2).decode())
            return 0
        columns = ("id", "name", "prefix", "owner", "org", "created", "last used", "expires", "status")
        rows = [
            (
                k["id"],
                k["name"],
                k["prefix"],
                k["owner"] or "-",
                k["org"] or "-",
                _when(k["created_at"]),
                _when(k["last_used_at"]),
                _when(k["expires_at"]),
                k["status"],
            )
            for k in listed
        ]
        widths = [max(len(str(cell)) for cell in column) for column in zip(columns, *rows, strict=False)]
        for row in (columns, *rows):
            print("  ".join(f"{cell:<{width}}" for cell, width in zip(row, widths, strict=True)).rstrip())
        return 0

    return _with_database(args, work)


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from gateway_core.events import Events
    from gateway_core.store import keys

    async def work(config: GatewayConfig, database: Database) -> int:
        events: Any = None
        if config.redis is not None:
            events = Events(config.redis.url)
            await events.start()
        try:
            reached = events is not None and events.connected
            key = await keys.revoke_key(args.key, events=events if reached else None)
        finally:
            if events is not None:
                await events.stop()
        print(f"revoked {key.prefix} ({key.name}, id {key.id})")
        if not reached:
            ttl = config.plugin_options("api_keys").get("cache_ttl_seconds", 60)
            why = "Redis is unreachable" if config.redis is not None else "no Redis is configured"
            print(
                f"Running gateways were not told ({why}): they refuse the key within {ttl} s, "
                "when their cache entry is refreshed.",
                file=sys.stderr,
            )
        return 0

    return _with_database(args, work)


def cmd_secrets_rotate(args: argparse.Namespace) -> int:
    from gateway_core.store.deployments import rotate_secrets
    from gateway_core.store.secrets import SecretBox, require_secret_box

    async def work(config: GatewayConfig, database: Database) -> int:
        box = require_secret_box(SecretBox.from_config(config))
        rotated, failed = await rotate_secrets(database, box)
        print(f"re-encrypted {rotated} secret(s) with secrets.key")
        if failed:
            print(
                "cannot be decrypted with secrets.key or secrets.previous_keys, left as they are "
                "(store them again through the admin API):",
                *failed,
                sep="\n  ",
                file=sys.stderr,
            )
            return 1
        return 0

    return _with_database(args, work, holds="stored deployments and their keys")


def build_parser(host: PluginHost | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lockgate", description="Lockgate LLM API gateway")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config", "-c", help=f"configuration file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG})"
        )
        return p

    serve = with_config(sub.add_parser("serve", help="run the gateway"))
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(run=cmd_serve)

    check = with_config(sub.add_parser("check-config", help="validate the configuration and exit"))
    check.set_defaults(run=cmd_check_config)

    plugins = with_config(sub.add_parser("plugins", help="list loaded plugins, versions and hooks"))
    plugins.add_argument("--json", action="store_true")
    plugins.add_argument(
        "--all", action="store_true", help="every installed plugin, ignoring the configuration"
    )
    plugins.set_defaults(run=cmd_plugins)

    keys = sub.add_parser("keys", help="API key helpers").add_subparsers(dest="keys_command", required=True)
    gen = keys.add_parser("generate", help="print a new random key and its SHA-256 digest")
    gen.add_argument("--quiet", "-q", action="store_true", help="print only the key")
    gen.set_defaults(run=cmd_keys_generate)
    hash_ = keys.add_parser("hash", help="print the SHA-256 digest of a key ('-' reads it from stdin)")
    hash_.add_argument("key")
    hash_.set_defaults(run=cmd_keys_hash)
    create = with_config(
        keys.add_parser("create", help="create an API key in the database and print it (shown once)")
    )
    create.add_argument("--name", required=True, help="what the key is for")
    create.add_argument("--owner", metavar="EMAIL", help="the user who owns the key")
    create.add_argument("--org", metavar="NAME_OR_ID", help="the organization the key belongs to")
    create.add_argument(
        "--models", metavar="M1,M2", help="model names or globs the key may use (default: all)"
    )
    create.add_argument(
        "--expires", metavar="30d|2026-12-31", help="a duration (90m, 12h, 30d, 2w) or a date"
    )
    create.add_argument("--json", action="store_true", help="print the key and its record as JSON")
    create.set_defaults(run=cmd_keys_create)
    list_ = with_config(
        keys.add_parser("list", help="list the database's API keys (never the keys themselves)")
    )
    list_.add_argument("--json", action="store_true")
    list_.set_defaults(run=cmd_keys_list)
    revoke = with_config(
        keys.add_parser("revoke", help="revoke an API key; running gateways drop it at once (with Redis)")
    )
    revoke.add_argument(
        "key", metavar="ID_OR_PREFIX", help="the key's id or its visible prefix (lg-xxxxxxxx)"
    )
    revoke.set_defaults(run=cmd_keys_revoke)

    users = sub.add_parser("users", help="users of the admin API").add_subparsers(
        dest="users_command", required=True, metavar="COMMAND"
    )
    admin = with_config(users.add_parser("create-admin", help="create a user with the admin role"))
    admin.add_argument("--email", required=True)
    admin.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input (else prompt)"
    )
    admin.add_argument("--org", metavar="NAME_OR_ID", help="make an organization-scoped admin")
    admin.set_defaults(run=cmd_users_create_admin)

    secrets = sub.add_parser("secrets", help="secrets stored in the database").add_subparsers(
        dest="secrets_command", required=True, metavar="COMMAND"
    )
    rotate = with_config(
        secrets.add_parser(
            "rotate",
            help="re-encrypt the deployments' stored API keys with secrets.key (after changing it)",
        )
    )
    rotate.set_defaults(run=cmd_secrets_rotate)

    from gateway_core.store.commands import add_db_commands

    add_db_commands(sub, with_config)

    from gateway_core.usage.commands import add_usage_command

    add_usage_command(sub, with_config)

    for command in host.commands() if host else ():
        p = sub.add_parser(command.name, help=command.help)
        if command.add_arguments:
            command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def _command_plugins(argv: Sequence[str] | None) -> PluginHost:
    """The plugins that may add sub-commands: those the configuration, when readable, leaves enabled.

    A plugin disabled in the configuration must not even be imported, so the configuration named on
    the command line (or by ``LOCKGATE_CONFIG``) is read before the entry points load.
    """
    pre = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    pre.add_argument("--config", "-c")
    disabled: set[str] = set()
    try:
        known, _ = pre.parse_known_args(argv)
        disabled = load_config(config_path(known.config)).disabled_plugins()
    except (argparse.ArgumentError, ConfigError):
        pass  # the sub-command reports a bad configuration itself
    return PluginHost(disabled=disabled)


def main(argv: Sequence[str] | None = None) -> int:
    reported = None
    try:
        host: PluginHost | None = _command_plugins(argv)
    except ConfigError as exc:
        reported = str(exc)
        print(f"lockgate: {exc}", file=sys.stderr)
        host = None
    args = build_parser(host).parse_args(argv)
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        if str(exc) != reported:  # a broken plugin is reported once, not again by the command
            print(f"lockgate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
