"""The ``ainode`` command line."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from node import __version__
from node.errors import ConfigError, DatabaseCorrupt, DatabaseTooNew

if TYPE_CHECKING:
    from node.config import Settings

log = logging.getLogger(__name__)


def _serve(args: argparse.Namespace) -> int:
    from node.app import Node
    from node.config import load_settings
    from node.heap import settle as settle_heap
    from node.logs import configure

    try:
        settings = load_settings(args.config)
        configure(settings.logging.level, settings.logging.format)
        node = Node(
            settings, source=str(args.config or "<embedded defaults>"), load_routines="background"
        )
    except ConfigError as exc:
        print(f"ainode: {exc}", file=sys.stderr)
        return 2
    except (DatabaseCorrupt, DatabaseTooNew) as exc:
        print(f"ainode: {exc}", file=sys.stderr)
        return 3
    node.start(defer_routines=True)  # the routines load once HTTP listens (below)
    # The DICOM listener is up; FastAPI and uvicorn are imported only now.
    import uvicorn

    from node.api.app import create_app

    https = settings.node.https
    # TLS 1.2+ with the BCP 195 suites, like the DICOM TLS listener.
    tls_options = (
        {"ssl_context_factory": lambda _config, _default: https.context()}
        if https is not None
        else {}
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(node),
            host=settings.node.bind_address,
            port=settings.node.http_port,
            log_level="warning",
            access_log=False,
            **tls_options,  # type: ignore[arg-type]
        )
    )

    def _terminate(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    def _routines_once_listening() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.01)
        node.start_routines()
        while not node.routines_loaded.wait(0.5):
            if server.should_exit or node.routines_problem:
                return
        frozen = settle_heap()
        log.info("start-up objects frozen for the garbage collector objects=%d", frozen)

    threading.Thread(target=_routines_once_listening, name="routines-start", daemon=True).start()
    signal.signal(signal.SIGTERM, _terminate)
    log.info("%s listening port=%d", "HTTPS" if https else "HTTP", settings.node.http_port)
    try:
        server.run()
    finally:
        node.stop()
    return 0


def _config_check(args: argparse.Namespace) -> int:
    import json

    import node.export.senders  # noqa: F401  (registers every destination kind)
    from node.config import config_problems
    from node.orchestration.registry import PluginRegistry

    registry = PluginRegistry.discover()

    def model_problems(settings: Settings) -> dict[str, str]:
        registry.configure(settings.models, settings.templates_dir)
        return registry.errors

    known = registry.names | set(registry.errors)
    settings, problems = config_problems(args.file, known, model_problems=model_problems)
    if args.json:
        listing = [{"path": where, "message": message} for where, message in problems]
        print(json.dumps({"file": str(args.file), "valid": not problems, "problems": listing}))
    elif problems:
        print(f"ainode: {args.file}: {len(problems)} problem(s)", file=sys.stderr)
        for where, message in problems:
            print(f"  {where}: {message}", file=sys.stderr)
    elif settings is not None:
        rules, destinations = len(settings.rules), len(settings.destinations)
        print(f"{args.file}: valid ({rules} rules, {destinations} destinations)")
    return 1 if problems else 0


def _plugins_list(args: argparse.Namespace) -> int:
    from node.config import load_settings
    from node.orchestration.registry import PluginRegistry, select_devices

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"ainode: {exc}", file=sys.stderr)
        return 2
    registry = PluginRegistry.discover(settings.workers.gpu_memory_budget_mb)
    registry.configure(settings.models, settings.templates_dir)
    devices = select_devices(settings.workers.device, settings.workers.devices)
    rows = []
    for device in devices:
        rows.extend(registry.status(device, load=not args.no_load))
    header = ("NAME", "VERSION", "DEVICE", "SOURCE", "STATUS")
    table = [header]
    for row in rows:
        loaded = "loaded" if row.loaded else "not loaded"
        state = f"FAILED: {row.error}" if row.error else loaded
        table.append((row.name, row.version, row.device, row.source, state))
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    for r in table:
        print("  ".join(f"{v:<{w}}" for v, w in zip(r[:4], widths, strict=True)) + f"  {r[4]}")
    registry.unload_all()
    failed = any(row.error for row in rows)
    if settings.executor.kind == "ray":
        failed = _ray_actors_list(settings) or failed
    return 1 if failed else 0


def _ray_actors_list(settings: Settings) -> bool:
    """Print the routine actors on the Ray cluster; True when one does not answer."""
    from node.orchestration.ray_executor import cluster_actors

    actors = cluster_actors(settings.executor)
    print(f"\nRay actors (namespace {settings.executor.namespace}, {settings.executor.address}):")
    if not actors:
        print("  none (actors start with the node's first job of each routine)")
    table = [("ACTOR", "ROUTINE", "NODE", "HOST/PID", "DEVICE", "GPUS", "STATE")]
    for a in actors:
        table.append(
            (
                a["name"],
                a["plugin"] or "?",
                (a.get("node_id") or "-")[:12],
                f"{a.get('host') or '-'}/{a.get('pid') or '-'}",
                a.get("device") or "-",
                ",".join(a.get("gpu_ids") or []) or "-",
                a["state"] + (f": {a['load_error']}" if a.get("load_error") else ""),
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(6)]
    if actors:
        for r in table:
            print("  ".join(f"{v:<{w}}" for v, w in zip(r[:6], widths, strict=True)) + f"  {r[6]}")
    return any(a["state"] != "ready" or a.get("load_error") for a in actors)


def _retention(args: argparse.Namespace) -> int:
    """Exit 0: done (or nothing due); 1: a dry run found series to delete; 2: bad config."""
    import json
    import time

    from node.config import load_settings
    from node.orchestration.retention_run import free_bytes, run_pass
    from node.state.backend import open_database

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"ainode: {exc}", file=sys.stderr)
        return 2
    db = open_database(settings.state, settings.database_path, check=False)
    try:
        settings.node.data_dir.mkdir(parents=True, exist_ok=True)
        report = run_pass(
            db,
            settings.retention,
            now=time.time(),
            free=free_bytes(settings.node.data_dir),
            dry_run=args.dry_run,
            user="cli",
        )
    finally:
        db.close()
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "deletions": report}, indent=2))
    else:
        verb = "would delete" if args.dry_run else "deleted"
        for e in report:
            parts = [p for p, on in (("spool", e["spool"]), ("results", e["results"])) if on]
            print(
                f"{verb} {'+'.join(parts)} of series {e['series_uid']}"
                f" ({e['instances']} instances, {e['bytes']} bytes): {e['reason']}"
            )
        total = sum(e["bytes"] for e in report)
        print(f"{len(report)} series, {total} bytes {verb}")
    return 1 if args.dry_run and report else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ainode", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ainode {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the node (DICOM listener, workers, HTTP)")
    serve.add_argument("--config", type=Path, help="YAML configuration (default: embedded)")
    serve.set_defaults(handler=_serve)
    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", type=Path)
    check.add_argument("--json", action="store_true", help="print the problems as JSON")
    check.set_defaults(handler=_config_check)
    plugins = commands.add_parser("plugins", help="inference plugins")
    plugin_commands = plugins.add_subparsers(dest="plugins_command", required=True)
    listing = plugin_commands.add_parser(
        "list", help="each plugin, its version, the device it uses and whether it loads"
    )
    listing.add_argument("--config", type=Path, help="YAML configuration (default: embedded)")
    listing.add_argument(
        "--no-load", action="store_true", help="do not try to load (only import errors show)"
    )
    listing.set_defaults(handler=_plugins_list)
    retention = commands.add_parser(
        "retention", help="delete old spooled series and results now (see README Retention)"
    )
    retention.add_argument("--config", type=Path, help="YAML configuration (default: embedded)")
    retention.add_argument("--dry-run", action="store_true", help="list, delete nothing")
    retention.add_argument("--json", action="store_true", help="machine-readable output")
    retention.set_defaults(handler=_retention)
    from node.cli.admin import add_commands

    add_commands(commands)
    from node.evaluation.cli import add_command as add_evaluate

    add_evaluate(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
