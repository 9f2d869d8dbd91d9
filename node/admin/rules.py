"""Routing rules kept in the state database, versioned, and tested before they are saved.

Which rules count
-----------------
The YAML configuration's ``rules`` *seed* the database the first time a node
starts on an empty data directory. From then on the database is
authoritative: rules are edited through the API, the console or the CLI, and
the YAML ``rules`` are ignored (a warning at start-up says so when they
differ). To start again from the YAML, remove every rule (or use a fresh
data directory).

Every change writes a new row in ``rule_versions`` (who, when, the whole
definition), so any earlier version can be restored; the rule's ``version``
counts up. The dispatcher reads the rules from the database on every
completed series, so a saved change applies to the next series.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydicom
import yaml
from pydantic import ValidationError
from pydicom.dataset import Dataset

from node.config import RuleSettings
from node.errors import Conflict, InvalidInput, NotFound
from node.routing import HeaderSubject, MappingSubject, Subject, evaluate
from node.state.db import Database

log = logging.getLogger(__name__)

SEEDED_KEY = "rules_seeded_from_config"


@dataclass(frozen=True)
class StoredRule:
    id: int
    position: int
    version: int
    updated_at: float
    updated_by: str
    rule: RuleSettings


@dataclass(frozen=True)
class RuleVersion:
    rule_id: int
    version: int
    name: str
    definition: dict[str, Any] | None
    action: str
    at: float
    user: str


def rule_definition(rule: RuleSettings) -> dict[str, Any]:
    """The rule as the plain mapping the YAML and the API use."""
    return rule.model_dump(mode="json")


def _stored(row: object) -> StoredRule:
    data = dict(row)  # type: ignore[call-overload]
    return StoredRule(
        id=int(data["id"]),
        position=int(data["position"]),
        version=int(data["version"]),
        updated_at=float(data["updated_at"]),
        updated_by=data["updated_by"],
        rule=RuleSettings.model_validate(json.loads(data["definition"])),
    )


# -- validation ---------------------------------------------------------------------------


def _field_of(location: Sequence[str | int], message: str) -> str:
    # A condition error names its own key path ("match.Foo.regex: ...").
    if message.startswith("match") and ":" in message:
        return message.split(":", 1)[0]
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "rule"


def parse_rule(
    data: Mapping[str, Any] | Any,
    *,
    plugins: Iterable[str],
    destinations: Iterable[str],
    taken_names: Iterable[str] = (),
) -> RuleSettings:
    """Validate a rule given as a mapping; raise :class:`InvalidInput` naming each field.

    ``match`` may be a mapping or a YAML/JSON text of one (what the console's editor sends).
    """
    if not isinstance(data, Mapping):
        raise InvalidInput("a rule must be a JSON object", [("rule", "expected an object")])
    raw = dict(data)
    problems: list[tuple[str, str]] = []
    if isinstance(raw.get("match"), str):
        try:
            raw["match"] = yaml.safe_load(raw["match"]) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(exc, "problem", None) or "syntax error"
            raise InvalidInput(
                f"match: not valid YAML{where}: {problem}",
                [("match", f"not valid YAML{where}: {problem}")],
            ) from None
    try:
        rule = RuleSettings.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors():
            context = error.get("ctx") or {}
            cause = context.get("error")
            message = str(cause) if cause is not None else error["msg"]
            if error["type"] == "extra_forbidden":
                message = "unknown field"
            problems.append((_field_of(tuple(error["loc"]), message), message))
        rule = None
    # References are checked even when the shape is wrong, so every problem shows at once.
    reported = {field for field, _ in problems}
    plugin = raw.get("plugin")
    known_plugins = set(plugins)
    if isinstance(plugin, str) and plugin not in known_plugins and "plugin" not in reported:
        names = ", ".join(sorted(known_plugins)) or "none installed"
        problems.append(("plugin", f"unknown plugin {plugin!r} (installed: {names})"))
    send_to = raw.get("send_to")
    known_destinations = set(destinations)
    for index, name in enumerate(send_to if isinstance(send_to, list) else []):
        if isinstance(name, str) and name not in known_destinations:
            names = ", ".join(sorted(known_destinations)) or "none defined"
            problems.append((f"send_to[{index}]", f"unknown destination {name!r} (known: {names})"))
    if isinstance(raw.get("name"), str) and raw["name"] in set(taken_names):
        problems.append(("name", f"another rule is already named {raw['name']!r}"))
    if problems or rule is None:
        raise InvalidInput(
            "the rule is invalid: " + "; ".join(f"{f}: {m}" for f, m in problems), problems
        )
    return rule


# -- evaluation -------------------------------------------------------------------------


def subject_from_dicom_bytes(data: bytes, calling_ae: str = "", called_ae: str = "") -> Subject:
    """A rule subject from an uploaded DICOM file (pixel data is not read)."""
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except Exception as exc:
        raise InvalidInput(
            f"the file is not DICOM: {exc}", [("file", "not a DICOM file")]
        ) from None
    if len(dataset) == 0:
        raise InvalidInput("the file holds no DICOM attributes", [("file", "not a DICOM file")])
    return HeaderSubject(dataset, calling_ae=calling_ae, called_ae=called_ae)


def subject_from_json(header: Mapping[str, Any]) -> Subject:
    """A rule subject from ``{"Modality": "CT", ...}`` or the DICOM JSON model.

    ``calling_ae`` and ``called_ae`` may be given as keys.
    """
    if not isinstance(header, Mapping) or not header:
        raise InvalidInput("the header must be a non-empty JSON object", [("header", "empty")])
    if all(len(str(key)) == 8 and _is_hex(str(key)) for key in header):
        try:
            dataset = Dataset.from_json(dict(header))
        except Exception as exc:
            raise InvalidInput(
                f"not a valid DICOM JSON header: {exc}", [("header", str(exc))]
            ) from None
        return HeaderSubject(dataset)
    return MappingSubject(dict(header))


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def explain(rules: Sequence[RuleSettings], subject: Subject) -> list[dict[str, Any]]:
    """For each rule: does it match, would it fire (enabled and matching), what failed."""
    results = []
    for rule in rules:
        outcome = evaluate(rule.name, rule.conditions, subject)
        results.append(
            {
                "rule": rule.name,
                "plugin": rule.plugin,
                "enabled": rule.enabled,
                "matched": outcome.matched,
                "fires": outcome.matched and rule.enabled,
                "failed": list(outcome.failed),
            }
        )
    return results


def firing(rules: Sequence[RuleSettings], subject: Subject) -> list[str]:
    return [r["rule"] for r in explain(rules, subject) if r["fires"]]


# -- storage ----------------------------------------------------------------------------


class RuleStore:
    """The rule table and its version history."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def seed(self, rules: Sequence[RuleSettings], now: float) -> bool:
        """Copy the configuration's rules in once, on a database that never had any.

        Returns True when it seeded, False when the database already decides.
        """
        with self._db.transaction() as cursor:
            cursor.execute("SELECT value FROM meta WHERE key = ?", (SEEDED_KEY,))
            if cursor.fetchone() is not None:
                return False
            cursor.execute("SELECT COUNT(*) AS n FROM rules")
            if cursor.fetchone()["n"]:
                return False
            for position, rule in enumerate(rules):
                self._insert(cursor, rule, position, "config", now, action="seeded")
            cursor.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)", (SEEDED_KEY, json.dumps(now))
            )
        return True

    @staticmethod
    def _insert(
        cursor: Any, rule: RuleSettings, position: int, user: str, now: float, action: str
    ) -> int:
        definition = json.dumps(rule_definition(rule))
        cursor.execute(
            "INSERT INTO rules (name, position, definition, version, updated_at, updated_by)"
            " VALUES (?, ?, ?, 1, ?, ?)",
            (rule.name, position, definition, now, user),
        )
        rule_id = int(cursor.lastrowid or 0)
        cursor.execute(
            "INSERT INTO rule_versions (rule_id, version, name, definition, action, at, user)"
            " VALUES (?, 1, ?, ?, ?, ?, ?)",
            (rule_id, rule.name, definition, action, now, user),
        )
        return rule_id

    def stored(self) -> list[StoredRule]:
        return [_stored(r) for r in self._db.query("SELECT * FROM rules ORDER BY position, id")]

    def active(self) -> list[RuleSettings]:
        """The rules the dispatcher applies, in order."""
        return [stored.rule for stored in self.stored()]

    def get(self, rule_id: int) -> StoredRule:
        rows = self._db.query("SELECT * FROM rules WHERE id = ?", (rule_id,))
        if not rows:
            raise NotFound(f"no rule with id {rule_id}")
        return _stored(rows[0])

    def by_name(self, name: str) -> StoredRule:
        rows = self._db.query("SELECT * FROM rules WHERE name = ?", (name,))
        if not rows:
            raise NotFound(f"no rule named {name!r}")
        return _stored(rows[0])

    def create(self, rule: RuleSettings, user: str, now: float) -> StoredRule:
        with self._db.transaction() as cursor:
            cursor.execute("SELECT 1 FROM rules WHERE name = ?", (rule.name,))
            if cursor.fetchone():
                raise Conflict(f"a rule named {rule.name!r} already exists")
            cursor.execute("SELECT COALESCE(MAX(position), -1) + 1 AS p FROM rules")
            rule_id = self._insert(cursor, rule, int(cursor.fetchone()["p"]), user, now, "created")
        return self.get(rule_id)

    def update(
        self, rule_id: int, rule: RuleSettings, user: str, now: float, action: str = "updated"
    ) -> StoredRule:
        current = self.get(rule_id)
        definition = json.dumps(rule_definition(rule))
        version = current.version + 1
        with self._db.transaction() as cursor:
            cursor.execute("SELECT id FROM rules WHERE name = ? AND id != ?", (rule.name, rule_id))
            if cursor.fetchone():
                raise Conflict(f"another rule is already named {rule.name!r}")
            cursor.execute(
                "UPDATE rules SET name = ?, definition = ?, version = ?, updated_at = ?,"
                " updated_by = ? WHERE id = ?",
                (rule.name, definition, version, now, user, rule_id),
            )
            cursor.execute(
                "INSERT INTO rule_versions (rule_id, version, name, definition, action, at, user)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rule_id, version, rule.name, definition, action, now, user),
            )
        return self.get(rule_id)

    def delete(self, rule_id: int, user: str, now: float) -> StoredRule:
        current = self.get(rule_id)
        with self._db.transaction() as cursor:
            cursor.execute("DELETE FROM rules WHERE id = ?", (rule_id,))
            cursor.execute(
                "INSERT INTO rule_versions (rule_id, version, name, definition, action, at, user)"
                " VALUES (?, ?, ?, NULL, 'deleted', ?, ?)",
                (rule_id, current.version + 1, current.rule.name, now, user),
            )
        return current

    def reorder(self, rule_ids: Sequence[int]) -> list[StoredRule]:
        """Put the rules in the given order (every rule id exactly once)."""
        existing = {stored.id for stored in self.stored()}
        if sorted(rule_ids) != sorted(existing):
            raise InvalidInput(
                "the new order must list every rule id exactly once",
                [("order", f"expected the ids {sorted(existing)}")],
            )
        with self._db.transaction() as cursor:
            for position, rule_id in enumerate(rule_ids):
                cursor.execute("UPDATE rules SET position = ? WHERE id = ?", (position, rule_id))
        return self.stored()

    def versions(self, rule_id: int) -> list[RuleVersion]:
        rows = self._db.query(
            "SELECT * FROM rule_versions WHERE rule_id = ? ORDER BY version DESC", (rule_id,)
        )
        if not rows:
            raise NotFound(f"no rule with id {rule_id} (now or before)")
        return [
            RuleVersion(
                rule_id=int(row["rule_id"]),
                version=int(row["version"]),
                name=row["name"],
                definition=json.loads(row["definition"]) if row["definition"] else None,
                action=row["action"],
                at=float(row["at"]),
                user=row["user"],
            )
            for row in rows
        ]

    def version(self, rule_id: int, version: int) -> RuleVersion:
        for candidate in self.versions(rule_id):
            if candidate.version == version:
                return candidate
        raise NotFound(f"rule {rule_id} has no version {version}")

    def restore_deleted(self, rule_id: int, rule: RuleSettings, user: str, now: float) -> int:
        """Re-create a deleted rule under its old id, as a new version."""
        last = self.versions(rule_id)[0]
        definition = json.dumps(rule_definition(rule))
        with self._db.transaction() as cursor:
            cursor.execute("SELECT 1 FROM rules WHERE name = ?", (rule.name,))
            if cursor.fetchone():
                raise Conflict(f"a rule named {rule.name!r} already exists")
            cursor.execute("SELECT COALESCE(MAX(position), -1) + 1 AS p FROM rules")
            position = int(cursor.fetchone()["p"])
            cursor.execute(
                "INSERT INTO rules (id, name, position, definition, version, updated_at,"
                " updated_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rule_id, rule.name, position, definition, last.version + 1, now, user),
            )
            cursor.execute(
                "INSERT INTO rule_versions (rule_id, version, name, definition, action, at, user)"
                " VALUES (?, ?, ?, ?, 'restored', ?, ?)",
                (rule_id, last.version + 1, rule.name, definition, now, user),
            )
        return rule_id


def differs_from_config(store: RuleStore, configured: Sequence[RuleSettings]) -> bool:
    return [rule_definition(r) for r in store.active()] != [rule_definition(r) for r in configured]


HeaderLoader = Callable[[str], Subject | None]
