"""The ``lockgate`` command line."""

from __future__ import annotations

import argparse
import hashlib
import secrets
import sys
from collections.abc import Sequence

import orjson

from gateway_core.config import GatewayConfig, load_config
from gateway_core.errors import ConfigError
from gateway_core.plugins import PluginHost
from gateway_core.server import CONFIG_ENV, DEFAULT_CONFIG, config_path

KEY_PREFIX = "lg-"


def generate_key() -> str:
    """A new random API key (256 bits of entropy)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


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
