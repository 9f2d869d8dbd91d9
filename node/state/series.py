"""Instances and series as the node has received them.

Rows here are the ingest side's record: which instances are durable in the
spool, and per series when the last one arrived, so completion can be
decided by a query with an injected ``now`` instead of timers in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from node.state.connection import Connection, Cursor


@dataclass(frozen=True)
class InstanceRecord:
    """One durable instance in the spool."""

    sop_uid: str
    series_uid: str
    study_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: Path
    size: int
    modality: str = ""
    calling_ae: str = ""
    called_ae: str = ""
    #: The node that received it (``node.name``; several nodes may share one state).
    received_by: str = ""


@dataclass(frozen=True)
class SeriesRow:
    series_uid: str
    study_uid: str
    modality: str
    calling_ae: str
    called_ae: str
    first_received: float
    last_received: float
    instance_count: int
    state: str
    completed_at: float | None
    generation: int
    #: The generation whose jobs are queued; less than ``generation`` until dispatch commits.
    dispatched_generation: int = 0
    #: Completion waits until this time (an aborted association, a restart mid-receive).
    hold_until: float | None = None
    #: Why completion was held (kept until the generation is dispatched).
    hold_reason: str | None = None
    #: When this generation's first instance arrived (None in rows from older nodes).
    generation_started: float | None = None
    #: Why this generation completed or waited other than by the quiet period.
    completion_note: str | None = None


#: A series still receiving whose completion is not held (or whose hold has run out).
_NOT_HELD = "(hold_until IS NULL OR hold_until <= ?)"


class _RecordedElsewhere(Exception):
    """The instance was recorded by another node during this call (rolled back)."""


def _series(row: object) -> SeriesRow:
    return SeriesRow(**dict(row))  # type: ignore[call-overload]


class SeriesStore:
    """Ingest bookkeeping (instances, series, completions)."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    def atomically(self) -> AbstractContextManager[object]:
        """One transaction around several calls (they nest as savepoints)."""
        return self._db.transaction()

    def known_instances(self) -> set[str]:
        return {row["sop_uid"] for row in self._db.query("SELECT sop_uid FROM instances")}

    def has_instance(self, sop_uid: str) -> bool:
        return bool(self._db.query("SELECT 1 FROM instances WHERE sop_uid = ?", (sop_uid,)))

    def stored_instance(self, sop_uid: str) -> tuple[str, Path] | None:
        """The series UID and spool path of a recorded instance, or None."""
        rows = self._db.query(
            "SELECT series_uid, path FROM instances WHERE sop_uid = ?", (sop_uid,)
        )
        return (str(rows[0]["series_uid"]), Path(rows[0]["path"])) if rows else None

    def touch_receiving(self, series_uid: str, now: float) -> None:
        """Count a re-sent (duplicate) instance as activity of a series still receiving, so
        a re-send that starts with instances already held is not completed half-way."""
        with self._db.transaction() as cursor:
            cursor.execute(
                "UPDATE series SET last_received = ?"
                " WHERE series_uid = ? AND state = 'receiving' AND last_received < ?",
                (now, series_uid, now),
            )

    def record_instance(self, record: InstanceRecord, now: float) -> tuple[bool, bool]:
        """Record a durable instance.

        Safe against other nodes recording instances of the same series at the same time
        (one shared state): the series row is created or updated by statements that
        repeat their condition (a concurrent insert or completion makes the next one
        apply), and a SOP Instance UID recorded meanwhile by another node leaves nothing
        of this call behind.

        Returns
        -------
        (added, reopened)
            ``added`` is False when the SOP Instance UID was already known
            (stored once); ``reopened`` is True when the instance arrived for
            a series that had already completed.
        """
        try:
            with self._db.transaction() as cursor:
                cursor.execute("SELECT 1 FROM instances WHERE sop_uid = ?", (record.sop_uid,))
                if cursor.fetchone():
                    return False, False
                reopened = self._count_in_series(cursor, record, now)
                cursor.execute(
                    "INSERT INTO instances (sop_uid, series_uid, study_uid, sop_class_uid,"
                    " transfer_syntax, path, size, received_at, received_by)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sop_uid) DO NOTHING",
                    (
                        record.sop_uid,
                        record.series_uid,
                        record.study_uid,
                        record.sop_class_uid,
                        record.transfer_syntax,
                        str(record.path),
                        record.size,
                        now,
                        record.received_by,
                    ),
                )
                if cursor.rowcount != 1:  # another node recorded it since the check
                    raise _RecordedElsewhere
                return True, reopened
        except _RecordedElsewhere:  # its savepoint undid this call's count
            return False, False

    @staticmethod
    def _count_in_series(cursor: Cursor, record: InstanceRecord, now: float) -> bool:
        """Count ``record`` in its series row (created if new); True when that re-opened a
        complete series. Each statement repeats its condition, so a row inserted or
        completed by another node in between makes the next statement the one that applies.
        """
        update = (
            "UPDATE series SET last_received = ?, instance_count = instance_count + 1,"
            " calling_ae = ?, called_ae = ?, state = 'receiving', generation_started = {started}"
            " WHERE series_uid = ? AND state = ?"
        )
        for _ in range(3):
            cursor.execute(
                update.format(started="?"),
                (now, record.calling_ae, record.called_ae, now, record.series_uid, "complete"),
            )
            if cursor.rowcount == 1:
                return True
            cursor.execute(
                update.format(started="COALESCE(generation_started, first_received)"),
                (now, record.calling_ae, record.called_ae, record.series_uid, "receiving"),
            )
            if cursor.rowcount == 1:
                return False
            cursor.execute(
                "INSERT INTO series (series_uid, study_uid, modality, calling_ae, called_ae,"
                " first_received, last_received, instance_count, generation_started)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?) ON CONFLICT (series_uid) DO NOTHING",
                (
                    record.series_uid,
                    record.study_uid,
                    record.modality,
                    record.calling_ae,
                    record.called_ae,
                    now,
                    now,
                    now,
                ),
            )
            if cursor.rowcount == 1:
                return False
        raise RuntimeError(f"series {record.series_uid} changed under every attempt to count")

    def quiet_series(self, now: float, quiet_seconds: float) -> list[SeriesRow]:
        """Series still receiving whose last instance is at least ``quiet_seconds`` old."""
        rows = self._db.query(
            "SELECT * FROM series WHERE state = 'receiving' AND last_received <= ?"
            f" AND {_NOT_HELD} ORDER BY last_received",
            (now - quiet_seconds, now),
        )
        return [_series(row) for row in rows]

    def next_quiet_at(self, quiet_seconds: float) -> float | None:
        """When the first series still receiving turns quiet (its hold, if any, over);
        None when none is receiving."""
        row = self._db.query(
            "SELECT min(max(last_received + ?, coalesce(hold_until, 0))) AS due FROM series"
            " WHERE state = 'receiving'",
            (quiet_seconds,),
        )
        due = row[0]["due"] if row else None
        return None if due is None else float(due)

    def overdue_series(self, now: float, max_age: float) -> list[SeriesRow]:
        """Series still receiving whose generation started at least ``max_age`` ago."""
        rows = self._db.query(
            "SELECT * FROM series WHERE state = 'receiving'"
            " AND COALESCE(generation_started, first_received) <= ? ORDER BY first_received",
            (now - max_age,),
        )
        return [_series(row) for row in rows]

    def completions_since(self, series_uid: str, since: float) -> list[float]:
        """Completion times of ``series_uid`` after ``since``, oldest first."""
        rows = self._db.query(
            "SELECT completed_at FROM series_completions WHERE series_uid = ?"
            " AND completed_at > ? ORDER BY completed_at",
            (series_uid, since),
        )
        return [float(row["completed_at"]) for row in rows]

    def note_completion(self, series_uid: str, note: str) -> bool:
        """Set why the current generation completes other than by the quiet period, unless a
        note is already set; True when it was set."""
        with self._db.transaction() as cursor:
            cursor.execute(
                "UPDATE series SET completion_note = ? WHERE series_uid = ?"
                " AND completion_note IS NULL",
                (note, series_uid),
            )
            return cursor.rowcount == 1

    def mark_complete(
        self, series_uid: str, now: float, quiet_seconds: float, *, ignore_hold: bool = False
    ) -> SeriesRow | None:
        """Mark a series complete if it is still quiet; return it with its new generation.

        The check is repeated inside the transaction so an instance that
        arrives between the query and this call keeps the series open.
        """
        with self._db.transaction() as cursor:
            cursor.execute(
                "UPDATE series SET state = 'complete', completed_at = ?,"
                " generation = generation + 1, hold_until = NULL"
                " WHERE series_uid = ? AND state = 'receiving' AND last_received <= ?"
                + ("" if ignore_hold else f" AND {_NOT_HELD}"),
                (now, series_uid, now - quiet_seconds, *(() if ignore_hold else (now,))),
            )
            if cursor.rowcount != 1:
                return None
            cursor.execute("SELECT * FROM series WHERE series_uid = ?", (series_uid,))
            row = _series(cursor.fetchone())
            cursor.execute(
                "INSERT INTO series_completions (series_uid, generation, completed_at)"
                " VALUES (?, ?, ?) ON CONFLICT (series_uid, generation)"
                " DO UPDATE SET completed_at = excluded.completed_at",
                (series_uid, row.generation, now),
            )
            return row

    def force_complete(self, series_uid: str, now: float) -> SeriesRow | None:
        """Complete a series now, whatever its quiet time or hold."""
        return self.mark_complete(series_uid, now, quiet_seconds=-1e18, ignore_hold=True)

    def claim_dispatch(self, series_uid: str, generation: int) -> bool:
        """Take the dispatch of ``generation`` (call in the transaction that queues its jobs):
        True for exactly one caller, however many nodes try (a conditional update), False
        when it is dispatched already. Also ends the hold's reason and note, as
        :meth:`mark_dispatched` does."""
        with self._db.transaction() as cursor:
            cursor.execute(
                "UPDATE series SET dispatched_generation = ?, hold_reason = NULL,"
                " completion_note = NULL WHERE series_uid = ? AND generation = ?"
                " AND dispatched_generation < ?",
                (generation, series_uid, generation, generation),
            )
            return cursor.rowcount == 1

    def mark_dispatched(self, series_uid: str, generation: int) -> None:
        """Record that ``generation``'s jobs are queued (call in the transaction that queues
        them); the completion hold's reason and note have been told and are cleared."""
        with self._db.transaction() as cursor:
            cursor.execute(
                "UPDATE series SET dispatched_generation = CASE"
                " WHEN dispatched_generation > ? THEN dispatched_generation ELSE ? END,"
                " hold_reason = NULL, completion_note = NULL WHERE series_uid = ?",
                (generation, generation, series_uid),
            )

    def undispatched(self) -> list[SeriesRow]:
        """Complete series whose current generation has no jobs queued yet."""
        rows = self._db.query(
            "SELECT * FROM series WHERE state = 'complete' AND dispatched_generation < generation"
            " ORDER BY completed_at"
        )
        return [_series(row) for row in rows]

    def hold(self, series_uids: Iterable[str], until: float, reason: str) -> list[str]:
        """Hold the completion of these series (those still receiving) until ``until``.

        Returns the series held. A later hold extends an earlier one; the reasons add up.
        """
        held = []
        with self._db.transaction() as cursor:
            for series_uid in series_uids:
                cursor.execute(
                    "UPDATE series SET hold_until = CASE"
                    " WHEN COALESCE(hold_until, 0) > ? THEN hold_until ELSE ? END,"
                    " hold_reason = CASE WHEN hold_reason IS NULL THEN ?"
                    " ELSE hold_reason || '; ' || ? END"
                    " WHERE series_uid = ? AND state = 'receiving'",
                    (until, until, reason, reason, series_uid),
                )
                if cursor.rowcount == 1:
                    held.append(series_uid)
        return held

    def hold_receiving(
        self, until: float, reason: str, *, received_by: str | Sequence[str] | None = None
    ) -> list[str]:
        """Hold every series still receiving (at start-up: its sender was cut off).

        ``received_by``: only the series of which that node (or one of those nodes, e.g. a
        node and its receiver processes; or a node before node names) received an instance
        of the current generation; other nodes sharing the state keep receiving theirs.
        """
        if received_by is None:
            rows = self._db.query("SELECT series_uid FROM series WHERE state = 'receiving'")
        else:
            names = [received_by] if isinstance(received_by, str) else list(received_by)
            marks = ", ".join("?" for _ in names)
            rows = self._db.query(
                "SELECT series_uid FROM series s WHERE state = 'receiving' AND EXISTS"
                " (SELECT 1 FROM instances i WHERE i.series_uid = s.series_uid"
                f" AND i.received_by IN ({marks}, '')"
                " AND i.received_at >= COALESCE(s.generation_started, s.first_received))",
                tuple(names),
            )
        return self.hold([row["series_uid"] for row in rows], until, reason)

    def release_hold(self, series_uids: Iterable[str], note: str) -> list[str]:
        """End the hold of these series (the quiet period applies again); return them."""
        released = []
        with self._db.transaction() as cursor:
            for series_uid in series_uids:
                cursor.execute(
                    "UPDATE series SET hold_until = NULL, hold_reason = hold_reason || '; ' || ?"
                    " WHERE series_uid = ? AND state = 'receiving' AND hold_until IS NOT NULL",
                    (note, series_uid),
                )
                if cursor.rowcount == 1:
                    released.append(series_uid)
        return released

    def series(self, series_uid: str) -> SeriesRow | None:
        rows = self._db.query("SELECT * FROM series WHERE series_uid = ?", (series_uid,))
        return _series(rows[0]) if rows else None

    def all_series(self, limit: int = 500) -> list[SeriesRow]:
        rows = self._db.query("SELECT * FROM series ORDER BY last_received DESC LIMIT ?", (limit,))
        return [_series(row) for row in rows]

    def complete_series_outside_study(self, modality: str, study_uid: str) -> list[SeriesRow]:
        """Complete series of ``modality`` in other studies than ``study_uid`` (prior lookup)."""
        rows = self._db.query(
            "SELECT * FROM series WHERE state = 'complete' AND modality = ? AND study_uid != ?"
            " ORDER BY last_received DESC",
            (modality, study_uid),
        )
        return [_series(row) for row in rows]

    def instance_receivers(self, series_uid: str) -> dict[Path, str]:
        """The node that received each instance of the series, by path (``''`` for rows
        from before node names)."""
        rows = self._db.query(
            "SELECT path, received_by FROM instances WHERE series_uid = ?", (series_uid,)
        )
        return {Path(row["path"]): str(row["received_by"] or "") for row in rows}

    def instance_paths(self, series_uid: str) -> list[Path]:
        rows = self._db.query(
            "SELECT path FROM instances WHERE series_uid = ? ORDER BY received_at, sop_uid",
            (series_uid,),
        )
        return [Path(row["path"]) for row in rows]
