"""The ``ainode`` command line."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from node import __version__
from node.errors import ConfigError

log = logging.getLogger(__name__)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from node.api.app import create_app
    from node.app import Node
    from node.config import load_settings
    from node.logs import configure

    try:
        settings = load_settings(args.config)
        configure(settings.logging.level)
        node = Node(settings, source=str(args.config or "<embedded defaults>"))
    except ConfigError as exc:
        print(f"ainode: {exc}", file=sys.stderr)
        return 2
    node.start()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(node),
            host=settings.node.bind_address,
            port=settings.node.http_port,
            log_level="warning",
            access_log=False,
        )
    )

    def _terminate(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    signal.signal(signal.SIGTERM, _terminate)
    log.info("HTTP listening port=%d", settings.node.http_port)
    try:
        server.run()
    finally:
        node.stop()
    return 0


def _config_check(args: argparse.Namespace) -> int:
    from node.config import check_plugins_known, load_settings
    from node.runtime.registry import PluginRegistry

    try:
        settings = load_settings(args.file)
        registry = PluginRegistry.discover()
        check_plugins_known(settings, registry.names | set(registry.errors), source=str(args.file))
    except ConfigError as exc:
        print(f"ainode: {exc}", file=sys.stderr)
        return 2
    rules, destinations = len(settings.rules), len(settings.destinations)
    print(f"{args.file}: valid ({rules} rules, {destinations} destinations)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ainode", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ainode {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the node (DICOM listener, workers, HTTP)")
    serve.add_argument("--config", type=Path, help="YAML configuration (default: embedded)")
    serve.set_defaults(handler=_serve)
    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", type=Path)
    check.set_defaults(handler=_config_check)
    from node.admin.cli import add_commands

    add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
