"""``ainode rules``: routing rules: validate, list, test, edit, replay."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from node.cli.admin.common import actor, admin_service, guard, print_result, with_config
from node.errors import ConfigError


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

    admin = admin_service(args)
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
    for stored in admin_service(args).rules.stored():
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
    return print_result(args, rule_json(stored), text)


def rules_add(args: argparse.Namespace) -> int:
    """As ``POST /api/rules``: validated by the same service function, then saved."""
    return _rule_done(args, admin_service(args).create_rule(_one_rule(args.file), actor()), "added")


def rules_update(args: argparse.Namespace) -> int:
    admin = admin_service(args)
    stored = admin.update_rule(args.rule_id, _one_rule(args.file), actor())
    return _rule_done(args, stored, "updated")


def rules_remove(args: argparse.Namespace) -> int:
    return _rule_done(args, admin_service(args).delete_rule(args.rule_id, actor()), "removed")


def rules_restore(args: argparse.Namespace) -> int:
    stored = admin_service(args).restore_rule(args.rule_id, args.version, actor())
    return _rule_done(args, stored, f"restored from version {args.version}")


def rules_order(args: argparse.Namespace) -> int:
    from node.api.serialize import rule_json

    ordered = admin_service(args).reorder_rules(args.rule_ids, actor())
    text = "order: " + " ".join(str(s.id) for s in ordered)
    return print_result(args, [rule_json(s) for s in ordered], text)


def rules_replay(args: argparse.Namespace) -> int:
    """As ``POST /api/rules/replay``: what the saved rules, or a change, fire on recent series."""
    admin = admin_service(args)
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
    return print_result(args, result, text)


def rules_test(args: argparse.Namespace) -> int:
    from node.admin.rules import subject_from_dicom_bytes

    admin = admin_service(args)
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


def add_commands(commands: Any) -> None:
    """Register ``ainode rules`` (routing rules: validate, list, test, edit, replay)."""
    rules = commands.add_parser("rules", help="validate, list and test routing rules")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    validate = with_config(
        rules_sub.add_parser("validate", help="check a YAML file of rules without saving it")
    )
    validate.add_argument("file", type=Path)
    validate.set_defaults(handler=guard(rules_validate))
    with_config(rules_sub.add_parser("list", help="the rules the node applies")).set_defaults(
        handler=guard(rules_list)
    )
    test = with_config(rules_sub.add_parser("test", help="which rules fire for a series or file"))
    target = test.add_mutually_exclusive_group(required=True)
    target.add_argument("--series", help="SeriesInstanceUID of a series the node received")
    target.add_argument("--file", type=Path, help="a DICOM file")
    test.add_argument("--rules", type=Path, help="test these rules instead of the saved ones")
    test.add_argument("--calling-ae", default="", help="sender AE title to assume (--file)")
    test.add_argument("--called-ae", default="", help="called AE title to assume (--file)")
    test.add_argument("--json", action="store_true")
    test.set_defaults(handler=guard(rules_test))
    for verb, handler, text in (
        ("add", rules_add, "save a new rule from a YAML/JSON file"),
        ("update", rules_update, "replace rule ID with the rule in a file"),
    ):
        change = with_config(rules_sub.add_parser(verb, help=text))
        if verb == "update":
            change.add_argument("rule_id", type=int)
        change.add_argument("--file", type=Path, required=True)
        change.add_argument("--json", action="store_true")
        change.set_defaults(handler=guard(handler))
    rule_remove = with_config(rules_sub.add_parser("remove", help="delete a rule"))
    rule_remove.add_argument("rule_id", type=int)
    rule_remove.add_argument("--json", action="store_true")
    rule_remove.set_defaults(handler=guard(rules_remove))
    order = with_config(rules_sub.add_parser("order", help="every rule id, in the new order"))
    order.add_argument("rule_ids", type=int, nargs="+")
    order.add_argument("--json", action="store_true")
    order.set_defaults(handler=guard(rules_order))
    restore = with_config(rules_sub.add_parser("restore", help="make an old version current"))
    restore.add_argument("rule_id", type=int)
    restore.add_argument("version", type=int)
    restore.add_argument("--json", action="store_true")
    restore.set_defaults(handler=guard(rules_restore))
    replay = with_config(
        rules_sub.add_parser("replay", help="which rules fire on recent series, now and after")
    )
    replay.add_argument("--days", type=float, default=7)
    replay.add_argument("--rule", type=Path, help="a changed or new rule (YAML/JSON file)")
    replay.add_argument("--rule-id", type=int, help="the rule --rule replaces")
    replay.add_argument("--rules", type=Path, help="a whole new rule set (YAML/JSON file)")
    replay.add_argument("--remove-id", type=int, help="as if this rule were deleted")
    replay.add_argument("--json", action="store_true")
    replay.set_defaults(handler=guard(rules_replay))
