"""Routing rules in the state database, with their version history.

Every change writes a ``rule_versions`` row (who, when, the whole definition); see
:mod:`node.admin.rules` for which rules count and how they are checked before saving.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from node.config import RuleSettings
from node.errors import Conflict, InvalidInput, NotFound
from node.state.connection import Connection

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


class RuleStore:
    """The rule table and its version history."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    def seed(self, rules: Sequence[RuleSettings], now: float) -> bool:
        """Copy the configuration's rules in once, on a database that never had any.

        Returns True when it seeded, False when the database already decides.
        """
        with self._db.transaction() as cursor:
            # The mark first, inserted only if absent: of nodes starting together on one
            # shared state, exactly one seeds (the others' inserts change nothing).
            cursor.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                (SEEDED_KEY, json.dumps(now)),
            )
            if cursor.rowcount != 1:
                return False
            cursor.execute("SELECT COUNT(*) AS n FROM rules")
            if cursor.fetchone()["n"]:
                return False  # rules from before the mark: the database decides
            for position, rule in enumerate(rules):
                self._insert(cursor, rule, position, "config", now, action="seeded")
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
