"""``ainode users|rules|jobs|series``: thin command-line wrappers over :class:`AdminService`.

They open the node's state database under the configuration's ``data_dir``
(the same file a running node uses; SQLite's WAL mode lets both work at once).
Changes are audited as ``cli:<login name>``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from node.errors import AinodeError, ConfigError


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli"


def _service(args: argparse.Namespace) -> Any:
    from node.admin.service import AdminService
    from node.config import load_settings
    from node.orchestration.registry import PluginRegistry
    from node.state.db import Database

    settings = load_settings(args.config)
    db = Database(settings.database_path)
    # Rules are checked against the plugins' names; none is imported (no torch for a CLI).
    registry = PluginRegistry.names_only(settings.models)
    admin = AdminService(db, registry, calling_ae=settings.node.ae_title)
    admin.seed_from_config(settings.rules, settings.destinations)
    return admin


def _fail(message: str) -> int:
    """A refused action or a missing object: message on stderr, exit 1 (2 is usage)."""
    print(f"ainode: {message}", file=sys.stderr)
    return 1


def _when(value: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)) if value else "-"


# -- users ------------------------------------------------------------------------------


def users_add(args: argparse.Namespace) -> int:
    from node.api.serialize import user_json

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif os.environ.get("AINODE_NEW_PASSWORD"):
        password = os.environ["AINODE_NEW_PASSWORD"]
    else:
        password = getpass.getpass(f"Password for {args.username}: ")
        if password != getpass.getpass("Again: "):
            return _fail("the passwords differ")
    admin = _service(args)
    user = admin.add_user(args.username, password, args.role, _actor())
    return _print(args, user_json(user), f"user {user.username} added with role {user.role}")


def users_list(args: argparse.Namespace) -> int:
    for user in _service(args).users.users():
        flag = " (disabled)" if user.disabled else ""
        print(f"{user.username:24} {user.role:7} since {_when(user.created_at)}{flag}")
    return 0


def _print(args: argparse.Namespace, data: Any, text: str) -> int:
    """``--json``: the API's response body; else one line for a person."""
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


def _new_password(args: argparse.Namespace, username: str) -> str | None:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if os.environ.get("AINODE_NEW_PASSWORD"):
        return os.environ["AINODE_NEW_PASSWORD"]
    password = getpass.getpass(f"Password for {username}: ")
    return password if password == getpass.getpass("Again: ") else None


def users_modify(args: argparse.Namespace) -> int:
    """As ``PATCH /api/users/{name}``: role, disabled and (asked for) password."""
    from node.api.serialize import user_json

    password = None
    if args.password or args.password_stdin:
        password = _new_password(args, args.username)
        if password is None:
            return _fail("the passwords differ")
    disabled = True if args.disable else False if args.enable else None
    if args.role is None and password is None and disabled is None:
        return _fail("nothing to change: give --role, --disable/--enable or --password")
    user = _service(args).update_user(
        args.username, _actor(), role=args.role, password=password, disabled=disabled
    )
    state = "disabled" if user.disabled else "enabled"
    return _print(args, user_json(user), f"user {user.username}: {user.role}, {state}")


def users_remove(args: argparse.Namespace) -> int:
    _service(args).delete_user(args.username, _actor())
    return _print(args, {"deleted": args.username}, f"user {args.username} removed")


def tokens_add(args: argparse.Namespace) -> int:
    """As ``POST /api/users/{name}/tokens``: the secret is printed once."""
    from datetime import datetime

    from node.api.serialize import token_json
    from node.errors import InvalidInput

    try:
        expires_at = datetime.fromisoformat(args.expires_at) if args.expires_at else None
    except ValueError:
        raise InvalidInput(f"expires_at: not an ISO 8601 time: {args.expires_at!r}") from None
    admin = _service(args)
    when = admin.token_expiry(args.expires_in_days, expires_at)
    secret, token = admin.create_token(args.username, args.name, _actor(), when)
    until = f"until {_when(token.expires_at)}" if token.expires_at else "without expiry"
    text = f"token {token.id} for {token.username} ({until}); shown once:\n{secret}"
    return _print(args, {**token_json(token), "token": secret}, text)


def tokens_remove(args: argparse.Namespace) -> int:
    from node.api.serialize import token_json

    token = _service(args).revoke_token(args.token_id, _actor())
    return _print(args, token_json(token), f"token {token.id} of {token.username} revoked")


# -- rules ------------------------------------------------------------------------------


def _rules_in_file(path: Path) -> list[Any]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(document, dict) and "rules" in document:
        document = document["rules"]
    if isinstance(document, dict):
        document = [document]
    if not isinstance(document, list):
        raise ConfigError(f"{path}: expected a rule, a list of rules or a 'rules:' section")
    return document


def rules_validate(args: argparse.Namespace) -> int:
    from node.errors import InvalidInput

    admin = _service(args)
    try:
        rules = admin.proposed_rules(rules=_rules_in_file(args.file))
    except InvalidInput as exc:
        for field, message in exc.problems:
            print(f"{args.file}: {field}: {message}", file=sys.stderr)
        return 1
    for rule in rules:
        conditions = " and ".join(c.describe() for c in rule.conditions) or "every series"
        print(f"{rule.name}: valid — fires when {conditions}")
    return 0


def rules_list(args: argparse.Namespace) -> int:
    for stored in _service(args).rules.stored():
        rule = stored.rule
        state = "" if rule.enabled else " (disabled)"
        print(f"{stored.id:4} {rule.name:28} {rule.plugin:12} v{stored.version}{state}")
    return 0


def _one_rule(path: Path) -> Any:
    rules = _rules_in_file(path)
    if len(rules) != 1:
        raise ConfigError(f"{path}: expected one rule, found {len(rules)}")
    return rules[0]


def _rule_done(args: argparse.Namespace, stored: Any, verb: str) -> int:
    from node.api.serialize import rule_json

    text = f"rule {stored.id} ({stored.rule.name}) {verb}, version {stored.version}"
    return _print(args, rule_json(stored), text)


def rules_add(args: argparse.Namespace) -> int:
    """As ``POST /api/rules``: validated by the same service function, then saved."""
    return _rule_done(args, _service(args).create_rule(_one_rule(args.file), _actor()), "added")


def rules_update(args: argparse.Namespace) -> int:
    admin = _service(args)
    stored = admin.update_rule(args.rule_id, _one_rule(args.file), _actor())
    return _rule_done(args, stored, "updated")


def rules_remove(args: argparse.Namespace) -> int:
    return _rule_done(args, _service(args).delete_rule(args.rule_id, _actor()), "removed")


def rules_restore(args: argparse.Namespace) -> int:
    stored = _service(args).restore_rule(args.rule_id, args.version, _actor())
    return _rule_done(args, stored, f"restored from version {args.version}")


def rules_order(args: argparse.Namespace) -> int:
    from node.api.serialize import rule_json

    ordered = _service(args).reorder_rules(args.rule_ids, _actor())
    text = "order: " + " ".join(str(s.id) for s in ordered)
    return _print(args, [rule_json(s) for s in ordered], text)


def rules_replay(args: argparse.Namespace) -> int:
    """As ``POST /api/rules/replay``: what the saved rules, or a change, fire on recent series."""
    admin = _service(args)
    rule = _one_rule(args.rule) if args.rule else None
    rules = _rules_in_file(args.rules) if args.rules else None
    proposed = admin.proposed_rules(
        rule=rule, rule_id=args.rule_id, rules=rules, remove_id=args.remove_id
    )
    result = admin.replay(proposed, args.days)
    text = (
        f"{result['series']} series in {args.days:g} days: {result['changed']} changed, "
        f"jobs {result['jobs_now']} now, {result['jobs_proposed']} proposed"
    )
    return _print(args, result, text)


def rules_test(args: argparse.Namespace) -> int:
    from node.admin.rules import subject_from_dicom_bytes

    admin = _service(args)
    if args.series:
        subject = admin.series_subject(args.series)
    else:
        subject = subject_from_dicom_bytes(args.file.read_bytes(), args.calling_ae, args.called_ae)
    rules = admin.proposed_rules(rules=_rules_in_file(args.rules)) if args.rules else None
    results = admin.test_rules(rules if rules is not None else admin.rules.active(), subject)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for item in results:
        verdict = "FIRES" if item["fires"] else ("disabled" if item["matched"] else "no")
        why = f"  not met: {'; '.join(item['failed'])}" if item["failed"] else ""
        print(f"{verdict:8} {item['rule']} ({item['plugin']}){why}")
    if not any(item["fires"] for item in results):
        print("no rule fires: the series would be stored but not processed")
    return 0


# -- jobs -------------------------------------------------------------------------------


def jobs_list(args: argparse.Namespace) -> int:
    admin = _service(args)
    found = admin.catalog.search_jobs(
        state=args.state or "",
        rule=args.rule or "",
        plugin=args.plugin or "",
        text=args.text or "",
        limit=args.limit,
    )
    for job, info in found:
        description = info.get("series_description") or job.series_uid[-20:]
        error = f"  {job.error[:80]}" if job.error else ""
        print(
            f"{job.id:6} {job.state:10} {job.rule:24} {job.plugin:12} {_when(job.created_at)}"
            f"  {description}{error}"
        )
    return 0


def jobs_show(args: argparse.Namespace) -> int:
    from node.api.serialize import job_json

    job, events, info = _service(args).job(args.job_id)
    if args.json:
        data = job_json(job, info)
        data["events"] = [e.__dict__ for e in events]
        print(json.dumps(data, indent=2))
        return 0
    print(f"job {job.id}: {job.state}  rule={job.rule} plugin={job.plugin} priority={job.priority}")
    print(f"series {job.series_uid} ({info.get('series_description') or 'no description'})")
    if job.error:
        print(f"error: {job.error}")
    for event in events:
        print(f"  {_when(event.at)}  {event.event:24} {event.detail}")
    return 0


def jobs_retry(args: argparse.Namespace) -> int:
    job = _service(args).retry_job(args.job_id, _actor())
    print(f"job {job.id} is {job.state} again")
    return 0


def series_complete(args: argparse.Namespace) -> int:
    service = _service(args)
    row = service.force_complete(args.series_uid, _actor())
    jobs = [
        j for j in service.queue.jobs(series_uid=row.series_uid) if j.generation == row.generation
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "series_uid": row.series_uid,
                    "state": row.state,
                    "generation": row.generation,
                    "instances": row.instance_count,
                    "job_ids": [job.id for job in jobs],
                }
            )
        )
        return 0
    print(
        f"series {row.series_uid} complete: generation {row.generation},"
        f" {row.instance_count} instance(s), {len(jobs)} job(s) queued"
    )
    return 0


def series_rerun(args: argparse.Namespace) -> int:
    jobs = _service(args).rerun_series(args.series_uid, _actor())
    if not jobs:
        print(f"series {args.series_uid}: no rule matches; no job queued")
    for job in jobs:
        print(f"job {job.id} queued rule={job.rule} plugin={job.plugin}")
    return 0


def _job_done(args: argparse.Namespace, job: Any, text: str) -> int:
    from node.api.serialize import job_json

    print(json.dumps(job_json(job)) if args.json else text)
    return 0


def jobs_cancel(args: argparse.Namespace) -> int:
    job = _service(args).cancel_job(args.job_id, _actor())
    return _job_done(args, job, f"job {job.id} is {job.state}")


def jobs_rerun(args: argparse.Namespace) -> int:
    job = _service(args).rerun_job(args.job_id, _actor(), args.plugin)
    return _job_done(
        args, job, f"job {job.id} queued ({job.plugin}) for job {args.job_id}'s series"
    )


def jobs_priority(args: argparse.Namespace) -> int:
    job = _service(args).set_job_priority(args.job_id, args.priority, _actor())
    return _job_done(args, job, f"job {job.id} has priority {job.priority}")


# -- destinations and sources -------------------------------------------------------------


def destinations_list(args: argparse.Namespace) -> int:
    from node.admin.destinations import destination_view
    from node.config.destinations import destination_kind

    destinations = _service(args).destinations.mapping()
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

    admin = _service(args)
    admin.save_destination(args.name, _destination_body(args), _actor(), create=create)
    view = destination_view(admin.destinations.get(args.name))
    return _print(args, view, f"destination {args.name} {'added' if create else 'updated'}")


def destinations_add(args: argparse.Namespace) -> int:
    """As ``POST /api/destinations/{name}``; secrets shown masked, as the API does."""
    return _save_destination(args, create=True)


def destinations_update(args: argparse.Namespace) -> int:
    return _save_destination(args, create=False)


def destinations_remove(args: argparse.Namespace) -> int:
    _service(args).delete_destination(args.name, _actor())
    return _print(args, {"deleted": args.name}, f"destination {args.name} removed")


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
        result = _service(args).echo(args.name, destination)
    else:
        result = _service(args).echo(args.name)
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
    from node.state.db import Database
    from node.state.pulls import PullStore

    settings = load_settings(args.config)
    return settings, PullStore(Database(settings.database_path))


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
        return _fail("; ".join(str(e["msg"]) for e in exc.errors()))
    settings, store = _pull_store(args)
    if body.source not in settings.sources:
        known = ", ".join(sorted(settings.sources)) or "none configured"
        raise NotFound(f"no source named {body.source!r} (known: {known})")
    pull = store.add(
        source=body.source,
        study_uid=body.study_uid or "",
        series_uid=body.series_uid,
        rule=body.rule,
        origin=_actor(),
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
            f"{p['id']:6} {p['state']:8} {p['source']:16} {_when(p['created_at'])}  {target}{error}"
        )
    return 0


def jobs_shadow(args: argparse.Namespace) -> int:
    from node.admin.shadow import shadow_predictions

    listing = shadow_predictions(
        _service(args).queue,
        rule=args.rule or "",
        plugin=args.plugin or "",
        series_uid=args.series or "",
        state=args.state,
    )
    print(json.dumps(listing, indent=2))
    return 0


def add_commands(commands: Any) -> None:
    """Register ``users``, ``rules``, ``jobs``, ``series`` and ``audit`` on the main parser."""

    def with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument(
            "--config", type=Path, help="the node's YAML configuration (default: embedded)"
        )
        return parser

    users = commands.add_parser("users", help="manage console/API users")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    add = with_config(users_sub.add_parser("add", help="add a user (asks for the password)"))
    add.add_argument("username")
    add.add_argument("--role", choices=["admin", "viewer"], default="viewer")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    add.add_argument("--json", action="store_true")
    add.set_defaults(handler=_guard(users_add))
    with_config(users_sub.add_parser("list", help="list users")).set_defaults(
        handler=_guard(users_list)
    )
    modify = with_config(users_sub.add_parser("modify", help="change role, state or password"))
    modify.add_argument("username")
    modify.add_argument("--role", choices=["admin", "viewer"])
    state = modify.add_mutually_exclusive_group()
    state.add_argument("--disable", action="store_true")
    state.add_argument("--enable", action="store_true")
    modify.add_argument("--password", action="store_true", help="ask for a new password")
    modify.add_argument("--password-stdin", action="store_true")
    modify.add_argument("--json", action="store_true")
    modify.set_defaults(handler=_guard(users_modify))
    remove = with_config(users_sub.add_parser("remove", help="delete a user"))
    remove.add_argument("username")
    remove.add_argument("--json", action="store_true")
    remove.set_defaults(handler=_guard(users_remove))
    tokens = users_sub.add_parser("tokens", help="API tokens")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    token_add = with_config(tokens_sub.add_parser("add", help="create a token (shown once)"))
    token_add.add_argument("username")
    token_add.add_argument("--name", default="api")
    expiry = token_add.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in-days", type=float)
    expiry.add_argument("--expires-at", help="ISO 8601 with a time zone")
    token_add.add_argument("--json", action="store_true")
    token_add.set_defaults(handler=_guard(tokens_add))
    token_remove = with_config(tokens_sub.add_parser("remove", help="revoke a token by id"))
    token_remove.add_argument("token_id", type=int)
    token_remove.add_argument("--json", action="store_true")
    token_remove.set_defaults(handler=_guard(tokens_remove))

    rules = commands.add_parser("rules", help="validate, list and test routing rules")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    validate = with_config(
        rules_sub.add_parser("validate", help="check a YAML file of rules without saving it")
    )
    validate.add_argument("file", type=Path)
    validate.set_defaults(handler=_guard(rules_validate))
    with_config(rules_sub.add_parser("list", help="the rules the node applies")).set_defaults(
        handler=_guard(rules_list)
    )
    test = with_config(rules_sub.add_parser("test", help="which rules fire for a series or file"))
    target = test.add_mutually_exclusive_group(required=True)
    target.add_argument("--series", help="SeriesInstanceUID of a series the node received")
    target.add_argument("--file", type=Path, help="a DICOM file")
    test.add_argument("--rules", type=Path, help="test these rules instead of the saved ones")
    test.add_argument("--calling-ae", default="", help="sender AE title to assume (--file)")
    test.add_argument("--called-ae", default="", help="called AE title to assume (--file)")
    test.add_argument("--json", action="store_true")
    test.set_defaults(handler=_guard(rules_test))
    for verb, handler, text in (
        ("add", rules_add, "save a new rule from a YAML/JSON file"),
        ("update", rules_update, "replace rule ID with the rule in a file"),
    ):
        change = with_config(rules_sub.add_parser(verb, help=text))
        if verb == "update":
            change.add_argument("rule_id", type=int)
        change.add_argument("--file", type=Path, required=True)
        change.add_argument("--json", action="store_true")
        change.set_defaults(handler=_guard(handler))
    rule_remove = with_config(rules_sub.add_parser("remove", help="delete a rule"))
    rule_remove.add_argument("rule_id", type=int)
    rule_remove.add_argument("--json", action="store_true")
    rule_remove.set_defaults(handler=_guard(rules_remove))
    order = with_config(rules_sub.add_parser("order", help="every rule id, in the new order"))
    order.add_argument("rule_ids", type=int, nargs="+")
    order.add_argument("--json", action="store_true")
    order.set_defaults(handler=_guard(rules_order))
    restore = with_config(rules_sub.add_parser("restore", help="make an old version current"))
    restore.add_argument("rule_id", type=int)
    restore.add_argument("version", type=int)
    restore.add_argument("--json", action="store_true")
    restore.set_defaults(handler=_guard(rules_restore))
    replay = with_config(
        rules_sub.add_parser("replay", help="which rules fire on recent series, now and after")
    )
    replay.add_argument("--days", type=float, default=7)
    replay.add_argument("--rule", type=Path, help="a changed or new rule (YAML/JSON file)")
    replay.add_argument("--rule-id", type=int, help="the rule --rule replaces")
    replay.add_argument("--rules", type=Path, help="a whole new rule set (YAML/JSON file)")
    replay.add_argument("--remove-id", type=int, help="as if this rule were deleted")
    replay.add_argument("--json", action="store_true")
    replay.set_defaults(handler=_guard(rules_replay))

    jobs = commands.add_parser("jobs", help="list, show and retry jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    listing = with_config(jobs_sub.add_parser("list", help="jobs, newest first"))
    listing.add_argument("--state")
    listing.add_argument("--rule")
    listing.add_argument("--plugin")
    listing.add_argument("--text")
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(handler=_guard(jobs_list))
    show = with_config(jobs_sub.add_parser("show", help="a job and its timeline"))
    show.add_argument("job_id", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_guard(jobs_show))
    retry = with_config(jobs_sub.add_parser("retry", help="run a failed job again"))
    retry.add_argument("job_id", type=int)
    retry.set_defaults(handler=_guard(jobs_retry))
    for verb, handler, text in (
        ("cancel", jobs_cancel, "cancel a queued or running job"),
        ("rerun", jobs_rerun, "queue a new job for the same series"),
        ("priority", jobs_priority, "change a queued job's priority"),
    ):
        action = with_config(jobs_sub.add_parser(verb, help=text))
        action.add_argument("job_id", type=int)
        if verb == "rerun":
            action.add_argument("--plugin", help="run this plugin instead of the job's")
        if verb == "priority":
            action.add_argument("priority", type=int)
        action.add_argument("--json", action="store_true")
        action.set_defaults(handler=_guard(handler))
    shadow = with_config(
        jobs_sub.add_parser("shadow", help="shadow jobs' predictions per series (JSON)")
    )
    shadow.add_argument("--rule")
    shadow.add_argument("--plugin")
    shadow.add_argument("--series", help="SeriesInstanceUID")
    shadow.add_argument("--state", default="done", help="job state; '' for every shadow job")
    shadow.set_defaults(handler=_guard(jobs_shadow))

    series = commands.add_parser("series", help="act on received series")
    series_sub = series.add_subparsers(dest="series_command", required=True)
    rerun = with_config(
        series_sub.add_parser(
            "rerun", help="route a complete series again (a new job per matching rule)"
        )
    )
    rerun.add_argument("series_uid")
    rerun.set_defaults(handler=_guard(series_rerun))
    complete = with_config(
        series_sub.add_parser("complete", help="complete a receiving series now and queue its jobs")
    )
    complete.add_argument("series_uid")
    complete.add_argument("--json", action="store_true")
    complete.set_defaults(handler=_guard(series_complete))

    kind_help = "a kind listed by 'ainode destinations kinds' (default dimse)"
    destinations = commands.add_parser("destinations", help="list, echo and edit destinations")
    dest_sub = destinations.add_subparsers(dest="destinations_command", required=True)
    dest_list = with_config(dest_sub.add_parser("list", help="saved destinations"))
    dest_list.add_argument("--json", action="store_true")
    dest_list.set_defaults(handler=_guard(destinations_list))
    dest_kinds = dest_sub.add_parser("kinds", help="the destination kinds and their fields")
    dest_kinds.add_argument("--json", action="store_true")
    dest_kinds.set_defaults(handler=_guard(destinations_kinds))
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
    dest_echo.set_defaults(handler=_guard(destinations_echo))
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
        save.set_defaults(handler=_guard(handler))
    dest_remove = with_config(dest_sub.add_parser("remove", help="delete a destination"))
    dest_remove.add_argument("name")
    dest_remove.add_argument("--json", action="store_true")
    dest_remove.set_defaults(handler=_guard(destinations_remove))

    pull = with_config(
        commands.add_parser("pull", help="queue a pull from a source (as POST /api/pull)")
    )
    pull.add_argument("source")
    pull.add_argument("--study", help="StudyInstanceUID")
    pull.add_argument("--series", help="SeriesInstanceUID")
    pull.add_argument("--rule", help="process with this rule only")
    pull.add_argument("--json", action="store_true")
    pull.set_defaults(handler=_guard(pull_start))
    pulls = with_config(commands.add_parser("pulls", help="the newest pulls and their state"))
    pulls.add_argument("--limit", type=int, default=50)
    pulls.add_argument("--json", action="store_true")
    pulls.set_defaults(handler=_guard(pulls_list))

    sources = commands.add_parser("sources", help="PACS the node can pull from")
    sources_sub = sources.add_subparsers(dest="sources_command", required=True)
    src_list = with_config(sources_sub.add_parser("list", help="configured sources"))
    src_list.add_argument("--json", action="store_true")
    src_list.set_defaults(handler=_guard(sources_list))

    from node.state.dicom_audit import EventType

    audit = commands.add_parser("audit", help="the DICOM audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    export = with_config(
        audit_sub.add_parser("export", help="write the DICOM audit trail as JSON lines")
    )
    export.add_argument("--since", help="epoch seconds, ISO 8601 (UTC) or an age like 24h")
    export.add_argument("--until", help="as --since")
    export.add_argument("--type", choices=[t.value for t in EventType])
    export.set_defaults(handler=_guard(audit_export))


def audit_export(args: argparse.Namespace) -> int:
    """Write the DICOM audit trail as JSON lines to standard output."""
    from node.config import load_settings
    from node.state.db import Database
    from node.state.dicom_audit import DicomAudit, parse_since

    try:
        since = parse_since(args.since) if args.since else None
        until = parse_since(args.until) if args.until else None
    except ValueError as exc:
        return _fail(str(exc))
    db = Database(load_settings(args.config).database_path)
    for event in DicomAudit(db).events(since=since, until=until, event_type=args.type):
        sys.stdout.write(json.dumps(event.json()) + "\n")
    return 0


def _guard(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args))
        except AinodeError as exc:
            return _fail(str(exc))

    return run
