"""Workitems the node performs for another worklist (the node as a UPS performer).

One ``performed_workitems`` row per claim: the worklist source, the workitem, the
Transaction UID the node claimed it with, the rule that performs it, and how far it got
(``claiming`` → ``fetching`` → ``running`` → ``completed`` | ``canceled``; ``lost`` when
the claim did not take or another performer holds it). The row is written before the
claim is sent, so a node killed at any point finds its Transaction UID on restart and
resumes (or gives up) the workitem with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from node.state.connection import Connection

#: States of a claim that still owes the worklist a final state.
ACTIVE = ("claiming", "fetching", "running")


@dataclass(frozen=True)
class Performed:
    id: int
    source: str
    workitem_uid: str
    transaction_uid: str
    rule: str
    state: str
    #: The workitem (DICOM JSON) as it was when claimed.
    workitem: dict[str, Any]
    pull_id: int | None
    job_id: int | None
    #: The newest job id when the claim was made: the workitem's job comes after it.
    after_job_id: int
    #: The last progress percentage reported to the worklist (-1: none yet).
    progress: int
    reason: str | None
    created_at: float
    updated_at: float

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "workitem_uid": self.workitem_uid,
            "rule": self.rule,
            "state": self.state,
            "pull_id": self.pull_id,
            "job_id": self.job_id,
            "progress": self.progress,
            "reason": self.reason,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def _performed(row: Any) -> Performed:
    data = dict(row)
    data["workitem"] = json.loads(data["workitem"] or "{}")
    return Performed(**data)


class PerformedStore:
    """Claims on other worklists' workitems."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    def add(
        self,
        *,
        source: str,
        workitem_uid: str,
        transaction_uid: str,
        rule: str,
        workitem: dict[str, Any],
        now: float,
    ) -> Performed:
        """Record a claim about to be made (state ``claiming``)."""
        with self._db.transaction() as cursor:
            cursor.execute("SELECT COALESCE(MAX(id), 0) AS newest FROM jobs")
            newest = int(cursor.fetchone()["newest"])
            cursor.execute(
                "INSERT INTO performed_workitems (source, workitem_uid, transaction_uid, rule,"
                " workitem, after_job_id, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    source,
                    workitem_uid,
                    transaction_uid,
                    rule,
                    json.dumps(workitem),
                    newest,
                    now,
                    now,
                ),
            )
            row_id = int(cursor.lastrowid or 0)
            cursor.execute("SELECT * FROM performed_workitems WHERE id = ?", (row_id,))
            return _performed(cursor.fetchone())

    def update(
        self,
        row_id: int,
        now: float,
        *,
        state: str | None = None,
        pull_id: int | None = None,
        job_id: int | None = None,
        progress: int | None = None,
        reason: str | None = None,
    ) -> None:
        sets: list[str] = ["updated_at = ?"]
        values: list[object] = [now]
        for column, value in (
            ("state", state),
            ("pull_id", pull_id),
            ("job_id", job_id),
            ("progress", progress),
            ("reason", reason),
        ):
            if value is not None:
                sets.append(f"{column} = ?")
                values.append(value)
        with self._db.transaction() as cursor:
            cursor.execute(
                f"UPDATE performed_workitems SET {', '.join(sets)} WHERE id = ?",
                (*values, row_id),
            )

    def get(self, row_id: int) -> Performed | None:
        rows = self._db.query("SELECT * FROM performed_workitems WHERE id = ?", (row_id,))
        return _performed(rows[0]) if rows else None

    def active(self) -> list[Performed]:
        """Claims that still owe their worklist a final state, oldest first."""
        marks = ", ".join("?" * len(ACTIVE))
        rows = self._db.query(
            f"SELECT * FROM performed_workitems WHERE state IN ({marks}) ORDER BY id", ACTIVE
        )
        return [_performed(row) for row in rows]

    def recent(self, limit: int = 100) -> list[Performed]:
        rows = self._db.query(
            "SELECT * FROM performed_workitems ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [_performed(row) for row in rows]

    def known(self, source: str, workitem_uid: str) -> bool:
        """Whether the node claimed (or tried to claim) this workitem before."""
        rows = self._db.query(
            "SELECT 1 FROM performed_workitems WHERE source = ? AND workitem_uid = ?",
            (source, workitem_uid),
        )
        return bool(rows)
