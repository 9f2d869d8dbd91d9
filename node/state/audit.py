"""The append-only audit log: who changed what, when, with the value before and after.

SQLite triggers refuse ``UPDATE`` and ``DELETE`` on the table, so entries can
only be added. Values are stored as JSON; secrets (password hashes, tokens)
are never passed in.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from node.state.connection import Connection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    user: str
    action: str
    target: str
    before: Any
    after: Any


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class AuditLog:
    """Appends and reads audit entries."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    def record(
        self, *, user: str, action: str, target: str, before: Any, after: Any, now: float
    ) -> int:
        """Append one entry and return its id."""
        with self._db.transaction() as cursor:
            cursor.execute(
                "INSERT INTO audit (at, user, action, target, before, after)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    now,
                    user,
                    action,
                    target,
                    None if before is None else json.dumps(before, sort_keys=True),
                    None if after is None else json.dumps(after, sort_keys=True),
                ),
            )
            entry_id = int(cursor.lastrowid or 0)
        log.info("audit id=%d user=%s action=%s target=%s", entry_id, user, action, target)
        return entry_id

    def entries(
        self,
        *,
        limit: int = 200,
        user: str | None = None,
        action: str | None = None,
        target: str | None = None,
    ) -> list[AuditEntry]:
        """Newest first, optionally filtered (``target`` matches as a prefix)."""
        clauses: list[str] = []
        parameters: list[object] = []
        if user:
            clauses.append("user = ?")
            parameters.append(user)
        if action:
            clauses.append("action LIKE ?")
            parameters.append(f"{action}%")
        if target:
            clauses.append("target LIKE ?")
            parameters.append(f"{target}%")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.query(
            f"SELECT * FROM audit{where} ORDER BY id DESC LIMIT ?", (*parameters, limit)
        )
        return [
            AuditEntry(
                id=int(row["id"]),
                at=float(row["at"]),
                user=row["user"],
                action=row["action"],
                target=row["target"],
                before=_load(row["before"]),
                after=_load(row["after"]),
            )
            for row in rows
        ]
