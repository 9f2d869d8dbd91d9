"""What every admin command shares: the admin service on the configured database, the
exit codes, printing, and the ``--config`` option."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from pathlib import Path
from typing import Any

from node.errors import AinodeError


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli"


def admin_service(args: argparse.Namespace) -> Any:
    from node.admin.service import AdminService
    from node.config import load_settings
    from node.orchestration.registry import PluginRegistry
    from node.state.backend import open_database

    settings = load_settings(args.config)
    db = open_database(settings.state, settings.database_path, check=False)
    # Rules are checked against the plugins' names; none is imported (no torch for a CLI).
    registry = PluginRegistry.names_only(settings.models)
    admin = AdminService(db, registry, calling_ae=settings.node.ae_title)
    admin.seed_from_config(settings.rules, settings.destinations)
    # The configured devices (no torch here: 'auto' matches no history device, so the ETA
    # falls back to the routine's jobs on any device and says so).
    admin.worker_devices = list(settings.workers.devices or [settings.workers.device])
    return admin


def fail(message: str) -> int:
    """A refused action or a missing object: message on stderr, exit 1 (2 is usage)."""
    print(f"ainode: {message}", file=sys.stderr)
    return 1


def format_time(value: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)) if value else "-"


def print_result(args: argparse.Namespace, data: Any, text: str) -> int:
    """``--json``: the API's response body; else one line for a person."""
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


def guard(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args))
        except AinodeError as exc:
            return fail(str(exc))

    return run


def with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` with the ``--config`` option every command that opens the node has."""
    parser.add_argument(
        "--config", type=Path, help="the node's YAML configuration (default: embedded)"
    )
    return parser
