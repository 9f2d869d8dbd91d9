"""``ainode audit``: the DICOM audit trail."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from node.cli.admin.common import fail, guard, with_config


def audit_export(args: argparse.Namespace) -> int:
    """Write the DICOM audit trail as JSON lines to standard output."""
    from node.config import load_settings
    from node.state.backend import open_database
    from node.state.dicom_audit import DicomAudit, parse_since

    try:
        since = parse_since(args.since) if args.since else None
        until = parse_since(args.until) if args.until else None
    except ValueError as exc:
        return fail(str(exc))
    settings = load_settings(args.config)
    db = open_database(settings.state, settings.database_path, check=False)
    for event in DicomAudit(db).events(since=since, until=until, event_type=args.type):
        sys.stdout.write(json.dumps(event.json()) + "\n")
    return 0


def add_commands(commands: Any) -> None:
    """Register ``ainode audit`` (the DICOM audit trail)."""
    from node.state.dicom_audit import EventType

    audit = commands.add_parser("audit", help="the DICOM audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    export = with_config(
        audit_sub.add_parser("export", help="write the DICOM audit trail as JSON lines")
    )
    export.add_argument("--since", help="epoch seconds, ISO 8601 (UTC) or an age like 24h")
    export.add_argument("--until", help="as --since")
    export.add_argument("--type", choices=[t.value for t in EventType])
    export.set_defaults(handler=guard(audit_export))
