"""``ainode destinations``: destinations, sources and pulls."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from node.cli.admin.common import (
    actor,
    admin_service,
    fail,
    format_time,
    guard,
    print_result,
    with_config,
)
from node.errors import ConfigError


def destinations_list(args: argparse.Namespace) -> int:
    from node.admin.destinations import destination_view
    from node.config.destinations import destination_kind

    destinations = admin_service(args).destinations.mapping()
    if args.json:
        print(json.dumps({n: destination_view(d) for n, d in destinations.items()}, indent=2))
        return 0
    for name, destination in sorted(destinations.items()):
        print(f"{name:20} {destination_kind(destination):8} {destination.peer()}")
    return 0


def destinations_kinds(args: argparse.Namespace) -> int:
    """The registered destination kinds (``node.export.senders.SENDERS``) and their fields."""
    from node.admin.destinations import destination_kinds

    kinds = destination_kinds()
    if args.json:
        print(json.dumps(kinds, indent=2))
        return 0
    for kind in kinds:
        fields = ", ".join(f["name"] + ("*" if f["required"] else "") for f in kind["fields"])
        print(f"{kind['name']:10} {kind['label']:22} {fields}")
    return 0


def _destination_body(args: argparse.Namespace) -> dict[str, Any]:
    """The API's request body from ``--file`` (YAML/JSON), ``--json-body`` and/or flags."""
    body: Any = {}
    try:
        if args.file:
            body = yaml.safe_load(args.file.read_text(encoding="utf-8")) or {}
        elif args.json_body:
            body = json.loads(args.json_body)
    except OSError as exc:
        raise ConfigError(f"{args.file}: cannot read: {exc.strerror}") from None
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"destination: not valid YAML/JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ConfigError("destination: expected a mapping of fields")
    flags = {"kind": args.kind, "ae_title": args.ae_title, "host": args.host, "port": args.port}
    body.update({k: v for k, v in flags.items() if v is not None})
    if args.results:
        body["results"] = [r.strip() for r in args.results.split(",") if r.strip()]
    return body


def _save_destination(args: argparse.Namespace, create: bool) -> int:
    from node.admin.destinations import destination_view

    admin = admin_service(args)
    admin.save_destination(args.name, _destination_body(args), actor(), create=create)
    view = destination_view(admin.destinations.get(args.name))
    return print_result(args, view, f"destination {args.name} {'added' if create else 'updated'}")


def destinations_add(args: argparse.Namespace) -> int:
    """As ``POST /api/destinations/{name}``; secrets shown masked, as the API does."""
    return _save_destination(args, create=True)


def destinations_update(args: argparse.Namespace) -> int:
    return _save_destination(args, create=False)


def destinations_remove(args: argparse.Namespace) -> int:
    admin_service(args).delete_destination(args.name, actor())
    return print_result(args, {"deleted": args.name}, f"destination {args.name} removed")


def destinations_echo(args: argparse.Namespace) -> int:
    """Echo a saved destination by name, or an unsaved one from the add options (as
    ``POST /api/destinations/echo``)."""
    unsaved = any(
        v is not None
        for v in (args.file, args.json_body, args.kind, args.ae_title, args.host, args.port)
    )
    if unsaved == (args.name is not None):
        print("ainode: give a saved destination's NAME or its fields, not both", file=sys.stderr)
        return 2
    if unsaved:
        from node.admin.destinations import parse_destination

        args.name, args.results = "(unsaved)", None
        destination = parse_destination(_destination_body(args))
        result = admin_service(args).echo(args.name, destination)
    else:
        result = admin_service(args).echo(args.name)
    if args.json:
        print(json.dumps(result.__dict__))
    elif result.ok:
        print(f"{args.name}: ok in {result.seconds:.3f} s ({result.message})")
    else:
        print(f"ainode: {args.name}: echo failed: {result.message}", file=sys.stderr)
    return 0 if result.ok else 1


def sources_list(args: argparse.Namespace) -> int:
    from node.config import load_settings

    settings = load_settings(args.config)
    rows = []
    for name, source in sorted(settings.sources.items()):
        data = source.model_dump(mode="json", exclude={"auth", "password", "token"})
        rows.append({"name": name, **data})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        where = row.get("url") or f"{row.get('ae_title')}@{row.get('host')}:{row.get('port')}"
        print(f"{row['name']:20} {row.get('kind', '-'):8} {where}")
    return 0


def _pull_store(args: argparse.Namespace) -> tuple[Any, Any]:
    from node.config import load_settings
    from node.state.backend import open_database
    from node.state.pulls import PullStore

    settings = load_settings(args.config)
    return settings, PullStore(open_database(settings.state, settings.database_path, check=False))


def pull_start(args: argparse.Namespace) -> int:
    """Queue a pull as ``POST /api/pull`` does; a running node claims it within a second."""
    from pydantic import ValidationError

    from node.api.dicomweb import PullRequest
    from node.errors import NotFound

    try:
        body = PullRequest(
            source=args.source, study_uid=args.study, series_uid=args.series, rule=args.rule
        )
    except ValidationError as exc:
        return fail("; ".join(str(e["msg"]) for e in exc.errors()))
    settings, store = _pull_store(args)
    if body.source not in settings.sources:
        known = ", ".join(sorted(settings.sources)) or "none configured"
        raise NotFound(f"no source named {body.source!r} (known: {known})")
    pull = store.add(
        source=body.source,
        study_uid=body.study_uid or "",
        series_uid=body.series_uid,
        rule=body.rule,
        origin=actor(),
        now=time.time(),
    )
    if args.json:
        print(json.dumps(pull.as_json()))
    else:
        print(f"pull {pull.id} queued from {pull.source}")
    return 0


def pulls_list(args: argparse.Namespace) -> int:
    _, store = _pull_store(args)
    pulls = [pull.as_json() for pull in store.recent(args.limit)]
    if args.json:
        print(json.dumps(pulls, indent=2))
        return 0
    for p in pulls:
        target = p["series_uid"] or p["study_uid"]
        error = f"  {p['error'][:80]}" if p["error"] else ""
        print(
            f"{p['id']:6} {p['state']:8} {p['source']:16} {format_time(p['created_at'])}"
            f"  {target}{error}"
        )
    return 0


def add_commands(commands: Any) -> None:
    """Register ``ainode destinations``, ``pull``, ``pulls`` and ``sources``."""
    kind_help = "a kind listed by 'ainode destinations kinds' (default dimse)"
    destinations = commands.add_parser("destinations", help="list, echo and edit destinations")
    dest_sub = destinations.add_subparsers(dest="destinations_command", required=True)
    dest_list = with_config(dest_sub.add_parser("list", help="saved destinations"))
    dest_list.add_argument("--json", action="store_true")
    dest_list.set_defaults(handler=guard(destinations_list))
    dest_kinds = dest_sub.add_parser("kinds", help="the destination kinds and their fields")
    dest_kinds.add_argument("--json", action="store_true")
    dest_kinds.set_defaults(handler=guard(destinations_kinds))
    dest_echo = with_config(
        dest_sub.add_parser(
            "echo", help="C-ECHO (or probe) a saved destination, or one given by its fields"
        )
    )
    dest_echo.add_argument("name", nargs="?", help="a saved destination")
    echo_body = dest_echo.add_mutually_exclusive_group()
    echo_body.add_argument("--file", type=Path, help="YAML/JSON fields of an unsaved destination")
    echo_body.add_argument("--json-body", help="the API's JSON body")
    dest_echo.add_argument("--kind", help=kind_help)
    dest_echo.add_argument("--ae-title")
    dest_echo.add_argument("--host")
    dest_echo.add_argument("--port", type=int)
    dest_echo.add_argument("--json", action="store_true")
    dest_echo.set_defaults(handler=guard(destinations_echo))
    for verb, handler, text in (
        ("add", destinations_add, "save a new destination"),
        ("update", destinations_update, "replace a destination's settings"),
    ):
        save = with_config(dest_sub.add_parser(verb, help=text))
        save.add_argument("name")
        body = save.add_mutually_exclusive_group()
        body.add_argument("--file", type=Path, help="YAML/JSON fields, as the API's body")
        body.add_argument("--json-body", help="the API's JSON body")
        save.add_argument("--kind", help=kind_help)
        save.add_argument("--ae-title")
        save.add_argument("--host")
        save.add_argument("--port", type=int)
        save.add_argument("--results", help="comma-separated result kinds, e.g. seg,sr")
        save.add_argument("--json", action="store_true")
        save.set_defaults(handler=guard(handler))
    dest_remove = with_config(dest_sub.add_parser("remove", help="delete a destination"))
    dest_remove.add_argument("name")
    dest_remove.add_argument("--json", action="store_true")
    dest_remove.set_defaults(handler=guard(destinations_remove))

    pull = with_config(
        commands.add_parser("pull", help="queue a pull from a source (as POST /api/pull)")
    )
    pull.add_argument("source")
    pull.add_argument("--study", help="StudyInstanceUID")
    pull.add_argument("--series", help="SeriesInstanceUID")
    pull.add_argument("--rule", help="process with this rule only")
    pull.add_argument("--json", action="store_true")
    pull.set_defaults(handler=guard(pull_start))
    pulls = with_config(commands.add_parser("pulls", help="the newest pulls and their state"))
    pulls.add_argument("--limit", type=int, default=50)
    pulls.add_argument("--json", action="store_true")
    pulls.set_defaults(handler=guard(pulls_list))

    sources = commands.add_parser("sources", help="PACS the node can pull from")
    sources_sub = sources.add_subparsers(dest="sources_command", required=True)
    src_list = with_config(sources_sub.add_parser("list", help="configured sources"))
    src_list.add_argument("--json", action="store_true")
    src_list.set_defaults(handler=guard(sources_list))
