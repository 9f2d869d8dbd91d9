"""UPS workitems and their event subscriptions, kept in the state database.

Two tables (created by :mod:`node.state.migrations`):

``workitems``
    One row per Unified Procedure Step: its state, the Transaction UID of whoever holds it
    IN PROGRESS (never shown to other clients), the whole workitem as DICOM JSON, the task
    it asked for and the routine that serves it, and the job and pull that perform it here.
``ups_subscriptions``
    Who wants event reports: an AE title and a workitem UID, or :data:`GLOBAL` (every
    workitem, present and future; ``filter`` holds the matching keys of a filtered global
    subscription as JSON).

The state machine itself (which change is allowed) lives in :mod:`node.worklist.states`;
:meth:`WorkitemStore.change` gives it one atomic read-modify-write per workitem. SQL is
portable (``?`` placeholders, plain types).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from node.state.connection import Connection, Cursor

log = logging.getLogger(__name__)

#: The workitem UID of a global subscription (the UPS Global Subscription SOP Instance).
GLOBAL = "1.2.840.10008.5.1.4.34.5"
#: The UPS Filtered Global Subscription SOP Instance.
FILTERED_GLOBAL = "1.2.840.10008.5.1.4.34.5.1"


class DuplicateWorkitem(Exception):
    """A workitem with this UID exists already."""


class UnknownWorkitem(KeyError):
    """No workitem with this UID."""


@dataclass(frozen=True)
class Workitem:
    """One row of ``workitems``; ``dataset`` is the workitem as DICOM JSON (a dict)."""

    uid: str
    state: str
    transaction_uid: str | None
    dataset: dict[str, Any]
    task: str
    routine: str
    priority: str
    scheduled_at: float | None
    #: ``node`` while this node performs it; ``external`` when a client claimed it.
    performer: str
    job_id: int | None
    pull_id: int | None
    cancel_requested: bool
    created_by: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Subscription:
    ae_title: str
    workitem_uid: str
    deletion_lock: bool
    #: Matching keys of a filtered global subscription (DICOM JSON keyword/tag -> value).
    filter: dict[str, str]


def _workitem(row: Any) -> Workitem:
    data = dict(row)
    data["dataset"] = json.loads(data["dataset"])
    data["cancel_requested"] = bool(data["cancel_requested"])
    return Workitem(**data)


_COLUMNS = (
    "state", "transaction_uid", "dataset", "task", "routine", "performer", "job_id", "pull_id",
    "cancel_requested", "scheduled_at", "priority",
)  # fmt: skip


class WorkitemStore:
    """Workitem rows and subscriptions; every writing method takes ``now``."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    # -- workitems --------------------------------------------------------------------
    def add(
        self,
        *,
        uid: str,
        dataset: dict[str, Any],
        task: str,
        routine: str,
        priority: str,
        scheduled_at: float | None,
        created_by: str,
        now: float,
    ) -> Workitem:
        """Insert a SCHEDULED workitem; raise :class:`DuplicateWorkitem` if the UID exists."""
        with self._db.transaction() as cursor:
            cursor.execute("SELECT uid FROM workitems WHERE uid = ?", (uid,))
            if cursor.fetchone() is not None:
                raise DuplicateWorkitem(uid)
            cursor.execute(
                "INSERT INTO workitems (uid, state, dataset, task, routine, priority,"
                " scheduled_at, created_by, created_at, updated_at)"
                " VALUES (?, 'SCHEDULED', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    uid,
                    json.dumps(dataset),
                    task,
                    routine,
                    priority,
                    scheduled_at,
                    created_by,
                    now,
                    now,
                ),
            )
            return self._locked(cursor, uid)

    @staticmethod
    def _locked(cursor: Cursor, uid: str) -> Workitem:
        cursor.execute("SELECT * FROM workitems WHERE uid = ?", (uid,))
        row = cursor.fetchone()
        if row is None:
            raise UnknownWorkitem(uid)
        return _workitem(row)

    def get(self, uid: str) -> Workitem | None:
        rows = self._db.query("SELECT * FROM workitems WHERE uid = ?", (uid,))
        return _workitem(rows[0]) if rows else None

    def all(self, *, state: str | None = None, limit: int = 1000) -> list[Workitem]:
        """Workitems, oldest first, optionally in one state."""
        if state is None:
            rows = self._db.query("SELECT * FROM workitems ORDER BY created_at LIMIT ?", (limit,))
        else:
            rows = self._db.query(
                "SELECT * FROM workitems WHERE state = ? ORDER BY created_at LIMIT ?",
                (state, limit),
            )
        return [_workitem(row) for row in rows]

    def for_job(self, job_id: int) -> Workitem | None:
        rows = self._db.query("SELECT * FROM workitems WHERE job_id = ?", (job_id,))
        return _workitem(rows[0]) if rows else None

    def change(
        self, uid: str, decide: Callable[[Workitem], Workitem | None], now: float
    ) -> tuple[Workitem, Workitem]:
        """Atomically replace a workitem by what ``decide`` makes of it.

        ``decide`` gets the current row inside the write transaction and returns the new
        row (only :data:`_COLUMNS` are written), ``None`` for no change, or raises (nothing
        is written). Returns ``(before, after)``; raises :class:`UnknownWorkitem`.
        """
        with self._db.transaction() as cursor:
            before = self._locked(cursor, uid)
            after = decide(before)
            if after is None:
                return before, before
            after = replace(after, updated_at=now)
            values = {name: getattr(after, name) for name in _COLUMNS}
            values["dataset"] = json.dumps(values["dataset"])
            values["cancel_requested"] = int(values["cancel_requested"])
            assignments = ", ".join(f"{name} = ?" for name in values)
            cursor.execute(
                f"UPDATE workitems SET {assignments}, updated_at = ? WHERE uid = ?",
                (*values.values(), now, uid),
            )
            return before, self._locked(cursor, uid)

    # -- subscriptions ----------------------------------------------------------------
    def subscribe(
        self,
        ae_title: str,
        workitem_uid: str,
        *,
        deletion_lock: bool,
        filter: dict[str, str] | None,
        now: float,
    ) -> None:
        """Add or replace one subscription. A global one also subscribes the AE to every
        existing workitem (that its filter matches: ``matches`` is applied by the caller,
        which passes the per-workitem subscriptions separately)."""
        with self._db.transaction() as cursor:
            cursor.execute(
                "DELETE FROM ups_subscriptions WHERE ae_title = ? AND workitem_uid = ?",
                (ae_title, workitem_uid),
            )
            cursor.execute(
                "INSERT INTO ups_subscriptions (ae_title, workitem_uid, deletion_lock, filter,"
                " created_at) VALUES (?, ?, ?, ?, ?)",
                (
                    ae_title,
                    workitem_uid,
                    int(deletion_lock),
                    json.dumps(filter) if filter else "",
                    now,
                ),
            )

    def unsubscribe(self, ae_title: str, workitem_uid: str) -> int:
        """Remove a subscription; for :data:`GLOBAL` every subscription of the AE (PS3.4
        CC.2.3.2). Returns how many rows went."""
        with self._db.transaction() as cursor:
            if workitem_uid in (GLOBAL, FILTERED_GLOBAL):
                cursor.execute("DELETE FROM ups_subscriptions WHERE ae_title = ?", (ae_title,))
            else:
                cursor.execute(
                    "DELETE FROM ups_subscriptions WHERE ae_title = ? AND workitem_uid = ?",
                    (ae_title, workitem_uid),
                )
            return int(cursor.rowcount)

    def suspend_global(self, ae_title: str) -> int:
        """Stop the AE's global subscription for new workitems; keep its per-workitem ones."""
        with self._db.transaction() as cursor:
            cursor.execute(
                "DELETE FROM ups_subscriptions WHERE ae_title = ? AND workitem_uid IN (?, ?)",
                (ae_title, GLOBAL, FILTERED_GLOBAL),
            )
            return int(cursor.rowcount)

    def subscriptions(
        self, *, ae_title: str | None = None, workitem_uid: str | None = None
    ) -> list[Subscription]:
        clauses: list[str] = []
        parameters: list[object] = []
        if ae_title is not None:
            clauses.append("ae_title = ?")
            parameters.append(ae_title)
        if workitem_uid is not None:
            clauses.append("workitem_uid = ?")
            parameters.append(workitem_uid)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.query(
            f"SELECT * FROM ups_subscriptions{where} ORDER BY ae_title, workitem_uid",
            tuple(parameters),
        )
        return [
            Subscription(
                ae_title=str(row["ae_title"]),
                workitem_uid=str(row["workitem_uid"]),
                deletion_lock=bool(row["deletion_lock"]),
                filter=json.loads(row["filter"]) if row["filter"] else {},
            )
            for row in rows
        ]

    def global_subscriptions(self) -> list[Subscription]:
        return [s for s in self.subscriptions() if s.workitem_uid in (GLOBAL, FILTERED_GLOBAL)]
