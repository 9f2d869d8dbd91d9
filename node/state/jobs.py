"""The durable job queue: one row per (series completion, matching rule).

States: ``queued`` → ``running`` (inference) → ``exporting`` (sending
results, with retries) → ``done``; any stage can end in ``failed`` with the
reason, or in ``cancelled`` by an administrator. A job whose input is outside
what the routine takes (the input-quality gate, the routine's ``Accepts``) ends
``skipped``: nothing is broken, so monitoring keeps it apart from ``failed``. Each transition is one
transaction and leaves a ``job_events`` row, which is the job's timeline.
A job cancelled while its worker runs stays cancelled: the worker's later
transitions only apply to a job still in the state they expect.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node.state import lease
from node.state.connection import Connection, Cursor
from node.state.events import EventCode

log = logging.getLogger(__name__)

JOB_STATES = ("queued", "running", "exporting", "done", "failed", "skipped", "cancelled")
#: States an administrator may cancel from / retry from.
CANCELLABLE = ("queued", "running", "exporting")
RETRYABLE = ("failed", "skipped", "cancelled", "done")


class JobActionError(ValueError):
    """An administrative action does not apply to the job in its current state."""


@dataclass(frozen=True)
class Job:
    id: int
    series_uid: str
    study_uid: str
    generation: int
    rule: str
    plugin: str
    destinations: tuple[str, ...]
    priority: int
    state: str
    attempts: int
    export_attempts: int
    next_attempt_at: float | None
    error: str | None
    result_dir: Path | None
    pending_destinations: tuple[str, ...]
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    #: Shadow mode: results are stored and listed but never sent.
    shadow: bool = False
    #: Who runs the job (``host:pid:worker``) while it is ``running``, and until when.
    owner: str | None = None
    lease_expires_at: float | None = None


@dataclass(frozen=True)
class JobEvent:
    job_id: int
    at: float
    event: str
    detail: str
    #: The :class:`~node.state.events.EventCode` value (what metrics and the console read).
    code: str = ""


def _job(row: object) -> Job:
    data = dict(row)  # type: ignore[call-overload]
    data["destinations"] = tuple(json.loads(data["destinations"]))
    data["pending_destinations"] = tuple(json.loads(data["pending_destinations"]))
    data["result_dir"] = Path(data["result_dir"]) if data["result_dir"] else None
    data["shadow"] = bool(data.get("shadow", 0))
    return Job(**data)


#: How jobs are claimed: the most urgent queued job, or a running one whose lease ran out.
JOB_LEASE = lease.LeaseTable(
    table="jobs",
    waiting_state="queued",
    running_state="running",
    due="1 = 1",
    order="priority, id",
    # A claimer reads its clock before it waits for the database; the job may have been
    # queued (or given back) meanwhile, later than that reading. Its start is then the
    # moment it was queued, so that no timeline shows "started" before "queued".
    claim_set=(
        "attempts = attempts + 1, error = NULL,"
        " started_at = CASE WHEN updated_at > ? THEN updated_at ELSE ? END,"
        " updated_at = CASE WHEN updated_at > ? THEN updated_at ELSE ? END"
    ),
)
#: Ends a job's lease (the worker records its outcome or the node gives it back).
_RELEASE = lease.release_columns()
#: An exporting job an exporter may take: its retry is due and no send holds it, or the
#: send holding it stopped renewing its lease (parameters: now, now).
_EXPORT_DUE = (
    "state = 'exporting' AND ((lease_expires_at IS NULL AND next_attempt_at <= ?)"
    " OR (lease_expires_at IS NOT NULL AND lease_expires_at <= ?))"
)


class JobQueue:
    """Job rows and their transitions; every method takes ``now`` explicitly."""

    def __init__(
        self, db: Connection, *, lease_seconds: float = lease.DEFAULT_LEASE_SECONDS
    ) -> None:
        self._db = db
        self.lease_seconds = lease_seconds

    def enqueue(
        self,
        *,
        series_uid: str,
        study_uid: str,
        generation: int,
        rule: str,
        plugin: str,
        destinations: list[str],
        priority: int,
        now: float,
        shadow: bool = False,
    ) -> int:
        with self._db.transaction() as cursor:
            cursor.execute(
                "INSERT INTO jobs (series_uid, study_uid, generation, rule, plugin, destinations,"
                " priority, created_at, updated_at, shadow) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    series_uid,
                    study_uid,
                    generation,
                    rule,
                    plugin,
                    json.dumps(destinations),
                    priority,
                    now,
                    now,
                    int(shadow),
                ),
            )
            job_id = int(cursor.lastrowid or 0)
            self._event(
                cursor,
                job_id,
                now,
                EventCode.JOB_QUEUED,
                f"rule={rule} plugin={plugin}" + (" shadow" if shadow else ""),
            )
        return job_id

    @staticmethod
    def _event(cursor: Cursor, job_id: int, now: float, code: EventCode, detail: str = "") -> None:
        cursor.execute(
            "INSERT INTO job_events (job_id, at, event, code, detail) VALUES (?, ?, ?, ?, ?)",
            (job_id, now, code.event, code.value, detail),
        )

    def add_event(self, job_id: int, now: float, code: EventCode, detail: str = "") -> None:
        with self._db.transaction() as cursor:
            self._event(cursor, job_id, now, code, detail)

    def claim_next(self, now: float, owner: str | None = None) -> Job | None:
        """Move the most urgent queued job to ``running`` for ``owner`` and return it.

        A running job whose lease has expired is claimable too (its worker died in
        another process); the takeover leaves a ``job.lease_expired`` event.
        """
        owner = owner or lease.owner_name("worker")
        with self._db.transaction() as cursor:
            claimed = lease.claim(cursor, JOB_LEASE, owner, now, self.lease_seconds)
            if claimed is None:
                return None
            cursor.execute("SELECT * FROM jobs WHERE id = ?", (claimed.id,))
            job = _job(cursor.fetchone())
            started = job.started_at if job.started_at is not None else now
            if claimed.reclaimed:
                self._event(
                    cursor,
                    claimed.id,
                    started,
                    EventCode.JOB_LEASE_EXPIRED,
                    f"lease of {claimed.previous_owner} expired; taken over by {owner}",
                )
            self._event(cursor, claimed.id, started, EventCode.JOB_STARTED, f"owner={owner}")
            return job

    def renew_lease(self, job_id: int, owner: str, now: float) -> bool:
        """Extend ``owner``'s lease on its running job; False when it lost the job."""
        with self._db.transaction() as cursor:
            return lease.renew(cursor, JOB_LEASE, job_id, owner, now, self.lease_seconds)

    def keep_lease(self, job: Job, clock: Callable[[], float]) -> lease.LeaseKeeper:
        """A keeper renewing ``job``'s lease every third of its length while it runs."""
        owner = job.owner or ""
        return lease.LeaseKeeper(
            lambda: self.renew_lease(job.id, owner, clock()), self.lease_seconds / 3
        )

    @staticmethod
    def _lost(cursor: Cursor, job_id: int, owner: str | None) -> str | None:
        """Who holds the job now when ``owner`` no longer does (its lease ran out and another
        worker or exporter took it); None when ``owner`` is None or still the holder, or
        the job is neither running nor exporting (e.g. cancelled: the caller's statement
        leaves it so)."""
        if owner is None:
            return None
        cursor.execute("SELECT state, owner FROM jobs WHERE id = ?", (job_id,))
        row = cursor.fetchone()
        if row is None or row["state"] not in ("running", "exporting") or row["owner"] == owner:
            return None
        return str(row["owner"] or f"another node ({row['state']})")

    def _record_lost(
        self, cursor: Cursor, job_id: int, now: float, owner: str, holder: str, outcome: str
    ) -> None:
        self._event(
            cursor,
            job_id,
            now,
            EventCode.JOB_LEASE_LOST,
            f"{owner} lost its lease to {holder}; its outcome not recorded: {outcome}",
        )

    def inference_done(
        self, job_id: int, result_dir: Path, now: float, *, owner: str | None = None
    ) -> Job:
        """Results are on disk; send them next (or finish when there is nowhere to send).

        ``owner``: the worker recording it; when another worker holds the job now (this
        one's lease ran out) the state is left to that worker.
        """
        with self._db.transaction() as cursor:
            holder = self._lost(cursor, job_id, owner)
            if holder is not None and owner is not None:
                self._record_lost(cursor, job_id, now, owner, holder, f"results in {result_dir}")
                return self._locked_job(cursor, job_id)
            cursor.execute("SELECT destinations, state, shadow FROM jobs WHERE id = ?", (job_id,))
            row = cursor.fetchone()
            if row["state"] != "running":  # cancelled meanwhile: keep the results, not the state
                self._event(cursor, job_id, now, EventCode.RESULTS_WRITTEN, str(result_dir))
                cursor.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
                return _job(cursor.fetchone())
            # A shadow job keeps its results on the node: nothing is pending, nothing is sent.
            destinations = "[]" if row["shadow"] else row["destinations"]
            state = "exporting" if json.loads(destinations) else "done"
            cursor.execute(
                "UPDATE jobs SET state = ?, result_dir = ?, pending_destinations = ?,"
                f" next_attempt_at = ?, updated_at = ?, finished_at = ?, {_RELEASE} WHERE id = ?",
                (
                    state,
                    str(result_dir),
                    destinations,
                    now,
                    now,
                    now if state == "done" else None,
                    job_id,
                ),
            )
            self._event(cursor, job_id, now, EventCode.RESULTS_WRITTEN, str(result_dir))
            if state == "done":
                detail = "shadow mode: nothing sent" if row["shadow"] else "no destinations"
                self._event(cursor, job_id, now, EventCode.JOB_DONE, detail)
            cursor.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
            return _job(cursor.fetchone())

    def claim_export(self, now: float, owner: str | None = None) -> Job | None:
        """Take the next exporting job whose retry time has come for ``owner`` and return it.

        The claim is a lease like a running job's: ``owner`` and ``lease_expires_at`` (and
        ``next_attempt_at``, pushed to the same time) keep a second exporter, in this or
        another node sharing the state, from taking the job while this one sends; the
        sender renews it (:meth:`keep_export_lease`) and releases it with the outcome. An
        export whose lease ran out (its exporter died mid-send) is claimable again, with a
        ``job.lease_expired`` event. ``lease_expires_at`` set tells a send in progress from
        a job waiting in backoff (:meth:`waiting_destinations`, :meth:`release_waiting`).
        """
        owner = owner or lease.owner_name("exporter")
        expires = now + self.lease_seconds
        with self._db.transaction() as cursor:
            # PostgreSQL: skip a row another exporter is claiming right now.
            lock = " FOR UPDATE SKIP LOCKED" if lease.locks_rows(cursor) else ""
            while True:
                cursor.execute(
                    f"SELECT id, owner, lease_expires_at FROM jobs WHERE {_EXPORT_DUE}"
                    f" ORDER BY priority, next_attempt_at, id LIMIT 1{lock}",
                    (now, now),
                )
                row = cursor.fetchone()
                if row is None:
                    return None
                # The condition is repeated: under a server database another exporter may
                # have taken the row since the SELECT; then this changes nothing.
                cursor.execute(
                    "UPDATE jobs SET owner = ?, lease_expires_at = ?, next_attempt_at = ?,"
                    f" export_attempts = export_attempts + 1, updated_at = ? WHERE id = ?"
                    f" AND {_EXPORT_DUE}",
                    (owner, expires, expires, now, row["id"], now, now),
                )
                if cursor.rowcount == 1:
                    break
            if row["lease_expires_at"] is not None:
                self._event(
                    cursor,
                    row["id"],
                    now,
                    EventCode.JOB_LEASE_EXPIRED,
                    f"export lease of {row['owner'] or 'an exporter'} expired;"
                    f" taken over by {owner}",
                )
            cursor.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],))
            return _job(cursor.fetchone())

    def renew_export_lease(self, job_id: int, owner: str, now: float) -> bool:
        """Extend ``owner``'s lease on the export it is sending; False when it lost it."""
        expires = now + self.lease_seconds
        with self._db.transaction() as cursor:
            cursor.execute(
                "UPDATE jobs SET lease_expires_at = ?, next_attempt_at = ? WHERE id = ?"
                " AND owner = ? AND state = 'exporting' AND lease_expires_at IS NOT NULL",
                (expires, expires, job_id, owner),
            )
            return cursor.rowcount == 1

    def keep_export_lease(self, job: Job, clock: Callable[[], float]) -> lease.LeaseKeeper:
        """A keeper renewing the export lease of ``job`` every third of its length."""
        owner = job.owner or ""
        return lease.LeaseKeeper(
            lambda: self.renew_export_lease(job.id, owner, clock()), self.lease_seconds / 3
        )

    def export_progress(
        self,
        job_id: int,
        pending: list[str],
        now: float,
        *,
        retry_at: float | None,
        error: str,
        detail: str | None = None,
        owner: str | None = None,
    ) -> None:
        """Record the destinations still pending after an attempt and when to retry
        (``detail``: the event's text, ``error`` when omitted); ``owner``: the exporter
        recording it (nothing changes when another one holds the export now)."""
        with self._db.transaction() as cursor:
            holder = self._lost(cursor, job_id, owner)
            if holder is not None and owner is not None:
                self._record_lost(cursor, job_id, now, owner, holder, f"retry: {error}")
                return
            cursor.execute(
                "UPDATE jobs SET pending_destinations = ?, next_attempt_at = ?, error = ?,"
                f" updated_at = ?, {_RELEASE} WHERE id = ? AND state = 'exporting'",
                (json.dumps(pending), retry_at, error or None, now, job_id),
            )
            self._event(cursor, job_id, now, EventCode.EXPORT_RETRY, detail or error)

    def export_started_at(self, job_id: int) -> float | None:
        """When the job's results became ready to send (written, or an administrator's retry):
        the start of its export time budget."""
        rows = self._db.query(
            "SELECT MAX(at) AS at FROM job_events WHERE job_id = ? AND code IN (?, ?)",
            (job_id, EventCode.RESULTS_WRITTEN.value, EventCode.JOB_RETRIED.value),
        )
        return None if not rows or rows[0]["at"] is None else float(rows[0]["at"])

    def waiting_destinations(self, now: float) -> set[str]:
        """Destinations that exporting jobs wait for in backoff (their retry is not due)."""
        rows = self._db.query(
            "SELECT pending_destinations FROM jobs WHERE state = 'exporting'"
            " AND next_attempt_at > ? AND lease_expires_at IS NULL",
            (now,),
        )
        return {name for row in rows for name in json.loads(row["pending_destinations"])}

    def release_waiting(
        self, destination: str, now: float, reason: str, *, exclude: int | None = None
    ) -> list[int]:
        """Make the jobs waiting in backoff for ``destination`` due now; return their ids."""
        with self._db.transaction() as cursor:
            cursor.execute(
                "SELECT id, pending_destinations FROM jobs WHERE state = 'exporting'"
                " AND next_attempt_at > ? AND lease_expires_at IS NULL",
                (now,),
            )
            released = [
                int(row["id"])
                for row in cursor.fetchall()
                if destination in json.loads(row["pending_destinations"]) and row["id"] != exclude
            ]
            for job_id in released:
                cursor.execute(
                    "UPDATE jobs SET next_attempt_at = ?, updated_at = ? WHERE id = ?",
                    (now, now, job_id),
                )
                self._event(cursor, job_id, now, EventCode.EXPORT_RELEASED, reason)
        return released

    def finish(
        self, job_id: int, now: float, detail: str = "", *, owner: str | None = None
    ) -> None:
        """The job is done (its results sent); ``owner``: the exporter recording it (see
        :meth:`export_progress`)."""
        with self._db.transaction() as cursor:
            holder = self._lost(cursor, job_id, owner)
            if holder is not None and owner is not None:
                self._record_lost(cursor, job_id, now, owner, holder, f"done: {detail}")
                return
            cursor.execute(
                "UPDATE jobs SET state = 'done', pending_destinations = '[]', error = NULL,"
                f" next_attempt_at = NULL, finished_at = ?, updated_at = ?, {_RELEASE}"
                " WHERE id = ? AND state != 'cancelled'",
                (now, now, job_id),
            )
            code = (
                EventCode.JOB_DONE if cursor.rowcount == 1 else EventCode.JOB_FINISHED_AFTER_CANCEL
            )
            self._event(cursor, job_id, now, code, detail)

    def fail(
        self,
        job_id: int,
        error: str,
        now: float,
        *,
        pending: list[str] | None = None,
        code: EventCode = EventCode.JOB_FAILED,
        owner: str | None = None,
    ) -> None:
        """Fail the job with ``error``; ``pending``: the destinations still owed results;
        ``code``: what failed (:attr:`EventCode.EXPORT_FAILED` when the export gave up);
        ``owner``: the worker recording it (see :meth:`inference_done`)."""
        with self._db.transaction() as cursor:
            holder = self._lost(cursor, job_id, owner)
            if holder is not None and owner is not None:
                self._record_lost(cursor, job_id, now, owner, holder, f"failed: {error}")
                return
            if pending is not None:
                cursor.execute(
                    "UPDATE jobs SET pending_destinations = ?"
                    " WHERE id = ? AND state != 'cancelled'",
                    (json.dumps(pending), job_id),
                )
            cursor.execute(
                "UPDATE jobs SET state = 'failed', error = ?, next_attempt_at = NULL,"
                f" finished_at = ?, updated_at = ?, {_RELEASE}"
                " WHERE id = ? AND state != 'cancelled'",
                (error, now, now, job_id),
            )
            if cursor.rowcount != 1:
                code = EventCode.JOB_ERROR_AFTER_CANCEL
            self._event(cursor, job_id, now, code, error)

    def rebuild(self, job_id: int, problem: str, now: float, *, owner: str | None = None) -> None:
        """An exporting job's result files are not whole: run inference again."""
        with self._db.transaction() as cursor:
            holder = self._lost(cursor, job_id, owner)
            if holder is not None and owner is not None:
                self._record_lost(cursor, job_id, now, owner, holder, f"rebuild: {problem}")
                return
            cursor.execute(
                "UPDATE jobs SET state = 'queued', next_attempt_at = NULL, result_dir = NULL,"
                " pending_destinations = '[]', updated_at = ?,"
                f" {_RELEASE} WHERE id = ? AND state = 'exporting'",
                (now, job_id),
            )
            if cursor.rowcount == 1:
                self._event(
                    cursor, job_id, now, EventCode.RESULTS_INCOMPLETE, f"{problem}; rebuilding"
                )

    def skip(
        self,
        job_id: int,
        reason: str,
        now: float,
        *,
        source: str,
        checks: list[dict[str, str]],
        owner: str | None = None,
    ) -> None:
        """End the job ``skipped``: its input is outside what the routine takes.

        The ``skipped`` event's detail is JSON: ``{"reason", "source", "checks"}``, each
        check ``{"check": name, "message": text}`` (read by the metrics and the console).
        """
        detail = json.dumps({"reason": reason, "source": source, "checks": checks})
        with self._db.transaction() as cursor:
            holder = self._lost(cursor, job_id, owner)
            if holder is not None and owner is not None:
                self._record_lost(cursor, job_id, now, owner, holder, f"skipped: {reason}")
                return
            cursor.execute(
                "UPDATE jobs SET state = 'skipped', error = ?, next_attempt_at = NULL,"
                f" finished_at = ?, updated_at = ?, {_RELEASE}"
                " WHERE id = ? AND state != 'cancelled'",
                (reason, now, now, job_id),
            )
            code = (
                EventCode.JOB_SKIPPED
                if cursor.rowcount == 1
                else EventCode.JOB_SKIPPED_AFTER_CANCEL
            )
            self._event(cursor, job_id, now, code, detail)

    def requeue_interrupted(self, now: float) -> list[int]:
        """On start-up: jobs left ``running`` by a crash go back to the queue.

        Those are the running jobs with no owner, or whose owner was a process of this
        host that no longer runs; a job held by a live process (another node process on
        the same database, or one on another host) keeps running under its lease.
        """
        with self._db.transaction() as cursor:
            cursor.execute("SELECT id, owner FROM jobs WHERE state = 'running'")
            ids = [int(row["id"]) for row in cursor.fetchall() if lease.owner_is_dead(row["owner"])]
            for job_id in ids:
                cursor.execute(
                    f"UPDATE jobs SET state = 'queued', updated_at = ?, {_RELEASE} WHERE id = ?",
                    (now, job_id),
                )
                self._event(
                    cursor, job_id, now, EventCode.JOB_REQUEUED, "node restarted while running"
                )
            # Exports interrupted mid-send are retried straight away; those a live exporter
            # (another node process sharing the state) is sending stay under its lease.
            cursor.execute("SELECT id, owner FROM jobs WHERE state = 'exporting'")
            exports = [int(r["id"]) for r in cursor.fetchall() if lease.owner_is_dead(r["owner"])]
            for job_id in exports:
                cursor.execute(
                    f"UPDATE jobs SET next_attempt_at = ?, {_RELEASE} WHERE id = ?", (now, job_id)
                )
        return ids

    def requeue(self, job_id: int, owner: str, now: float, reason: str) -> bool:
        """Give ``owner``'s running job back to the queue (its executor lost it, e.g. a
        Ray actor or node died); False when ``owner`` no longer holds it."""
        with self._db.transaction() as cursor:
            cursor.execute(
                f"UPDATE jobs SET state = 'queued', updated_at = ?, {_RELEASE}"
                " WHERE id = ? AND state = 'running' AND owner = ?",
                (now, job_id, owner),
            )
            if cursor.rowcount != 1:
                return False
            self._event(cursor, job_id, now, EventCode.JOB_REQUEUED, reason)
        return True

    def get(self, job_id: int) -> Job | None:
        rows = self._db.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def next_queued(self) -> Job | None:
        """The queued job the next claim takes (the claim's order), without claiming it."""
        rows = self._db.query(
            f"SELECT * FROM jobs WHERE state = 'queued' ORDER BY {JOB_LEASE.order} LIMIT 1"
        )
        return _job(rows[0]) if rows else None

    def jobs(self, *, state: str | None = None, series_uid: str | None = None) -> list[Job]:
        clauses, parameters = [], []
        if state is not None:
            clauses.append("state = ?")
            parameters.append(state)
        if series_uid is not None:
            clauses.append("series_uid = ?")
            parameters.append(series_uid)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.query(f"SELECT * FROM jobs{where} ORDER BY id", tuple(parameters))
        return [_job(row) for row in rows]

    def events(self, job_id: int) -> list[JobEvent]:
        rows = self._db.query(
            "SELECT job_id, at, event, detail, code FROM job_events WHERE job_id = ? ORDER BY id",
            (job_id,),
        )
        return [JobEvent(**dict(row)) for row in rows]

    def depth(self) -> dict[str, int]:
        rows = self._db.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        counts = dict.fromkeys(JOB_STATES, 0)
        counts.update({row["state"]: int(row["n"]) for row in rows})
        return counts

    def earlier_generations_with_results(self, series_uid: str, rule: str, generation: int) -> int:
        """How many generations of the series before ``generation`` produced results for the
        rule (a generation whose jobs all failed before writing any counts for nothing)."""
        rows = self._db.query(
            "SELECT COUNT(DISTINCT generation) AS n FROM jobs WHERE series_uid = ? AND rule = ?"
            " AND generation < ? AND result_dir IS NOT NULL",
            (series_uid, rule, generation),
        )
        return int(rows[0]["n"])

    def previous_result_dir(self, series_uid: str, rule: str, before_job: int) -> Path | None:
        """The newest earlier finished result of the same series and rule (for supersede)."""
        rows = self._db.query(
            "SELECT result_dir FROM jobs WHERE series_uid = ? AND rule = ? AND id < ?"
            " AND result_dir IS NOT NULL ORDER BY id DESC LIMIT 1",
            (series_uid, rule, before_job),
        )
        return Path(rows[0]["result_dir"]) if rows else None

    # -- administrative actions (each leaves an event naming who asked) ---------------

    def _locked_job(self, cursor: Cursor, job_id: int) -> Job:
        cursor.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
        row = cursor.fetchone()
        if row is None:
            raise KeyError(job_id)
        return _job(row)

    def cancel(self, job_id: int, now: float, *, by: str) -> Job:
        """Stop a queued, running or exporting job; results already written stay on disk."""
        with self._db.transaction() as cursor:
            job = self._locked_job(cursor, job_id)
            if job.state not in CANCELLABLE:
                raise JobActionError(
                    f"job {job_id} is {job.state}; only {', '.join(CANCELLABLE)} jobs can be"
                    " cancelled"
                )
            cursor.execute(
                "UPDATE jobs SET state = 'cancelled', next_attempt_at = NULL, finished_at = ?,"
                f" updated_at = ?, {_RELEASE} WHERE id = ?",
                (now, now, job_id),
            )
            self._event(cursor, job_id, now, EventCode.JOB_CANCELLED, f"by {by}")
            return self._locked_job(cursor, job_id)

    def retry(self, job_id: int, now: float, *, by: str) -> Job:
        """Run a finished job again.

        A job whose results exist but were not all delivered goes back to
        ``exporting`` (only the pending destinations, attempts counted afresh);
        any other goes back to ``queued`` and runs inference again.
        """
        with self._db.transaction() as cursor:
            job = self._locked_job(cursor, job_id)
            if job.state not in RETRYABLE:
                raise JobActionError(
                    f"job {job_id} is {job.state}; only {', '.join(RETRYABLE)} jobs can be retried"
                )
            resend = (
                not job.shadow
                and job.result_dir is not None
                and job.result_dir.is_dir()
                and bool(job.pending_destinations)
            )
            if resend:
                cursor.execute(
                    "UPDATE jobs SET state = 'exporting', export_attempts = 0, error = NULL,"
                    f" next_attempt_at = ?, finished_at = NULL, updated_at = ?, {_RELEASE}"
                    " WHERE id = ?",
                    (now, now, job_id),
                )
                self._event(cursor, job_id, now, EventCode.JOB_RETRIED, f"by {by}; resend results")
            else:
                cursor.execute(
                    "UPDATE jobs SET state = 'queued', error = NULL, next_attempt_at = NULL,"
                    " export_attempts = 0, started_at = NULL, finished_at = NULL,"
                    " updated_at = ? WHERE id = ?",
                    (now, job_id),
                )
                self._event(cursor, job_id, now, EventCode.JOB_RETRIED, f"by {by}; run again")
            return self._locked_job(cursor, job_id)

    def rerun(self, job_id: int, now: float, *, by: str, plugin: str | None = None) -> int:
        """Queue a new job for the same series and rule, optionally with another plugin."""
        job = self.get(job_id)
        if job is None:
            raise KeyError(job_id)
        chosen = plugin or job.plugin
        new_id = self.enqueue(
            series_uid=job.series_uid,
            study_uid=job.study_uid,
            generation=job.generation,
            rule=job.rule,
            plugin=chosen,
            destinations=list(job.destinations),
            priority=job.priority,
            now=now,
            shadow=job.shadow,
        )
        self.add_event(new_id, now, EventCode.JOB_RERUN_OF, f"job {job_id} by {by}")
        self.add_event(job_id, now, EventCode.JOB_RERUN, f"as job {new_id} plugin={chosen} by {by}")
        return new_id

    def set_priority(self, job_id: int, priority: int, now: float, *, by: str) -> Job:
        """Change the priority of a job that has not finished (0 is most urgent)."""
        if not 0 <= priority <= 9:
            raise JobActionError("priority must be between 0 (most urgent) and 9")
        with self._db.transaction() as cursor:
            job = self._locked_job(cursor, job_id)
            if job.state not in CANCELLABLE:
                raise JobActionError(f"job {job_id} is {job.state}; its priority no longer matters")
            cursor.execute(
                "UPDATE jobs SET priority = ?, updated_at = ? WHERE id = ?",
                (priority, now, job_id),
            )
            self._event(
                cursor,
                job_id,
                now,
                EventCode.JOB_PRIORITY_CHANGED,
                f"{job.priority} -> {priority} by {by}",
            )
            return self._locked_job(cursor, job_id)

    def depth_by_priority(self) -> dict[int, int]:
        """Queued jobs per priority."""
        rows = self._db.query(
            "SELECT priority, COUNT(*) AS n FROM jobs WHERE state = 'queued' GROUP BY priority"
        )
        return {int(row["priority"]): int(row["n"]) for row in rows}
