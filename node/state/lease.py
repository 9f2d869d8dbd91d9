"""Claim-with-lease: the one way a worker takes a row of a work table (jobs, pulls).

A claim moves the most urgent due row to its running state and writes who holds
it (``owner``, e.g. ``host:pid:worker-cpu``) and until when (``lease_expires_at``).
The holder renews the lease while it works and releases it when it records the
outcome. A running row whose lease has run out (its holder died or hung) is due
again, so a worker in another process takes it over.

The statements are portable SQL: a ``SELECT`` of the candidate, then an ``UPDATE``
that repeats the condition and counts the rows it changed. Under SQLite the
caller's ``BEGIN IMMEDIATE`` transaction already serialises claims; under a
server database the repeated condition makes a lost race change nothing and the
claim tries the next candidate. On PostgreSQL the candidate is selected
``FOR UPDATE SKIP LOCKED`` (:func:`locking_candidates_sql`): two nodes sharing the
database never take the same row, and neither waits behind a row the other holds.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from node.host import process_runs
from node.state.connection import Cursor

log = logging.getLogger(__name__)

#: How long a claim holds a row unless renewed (seconds).
DEFAULT_LEASE_SECONDS = 60.0


def owner_name(worker: str, node: str = "") -> str:
    """An owner id for ``worker`` in this process: ``host:pid:worker``, and ``@node`` (the
    node's name, ``node.name``) when given."""
    return f"{socket.gethostname()}:{os.getpid()}:{worker}" + (f"@{node}" if node else "")


def owner_is_dead(owner: str | None) -> bool:
    """At start-up: True when ``owner`` cannot still be working on its row.

    That is no owner (rows from before leases), a process of this host that no longer
    runs, or this very process (its workers have not started yet). Owners on other
    hosts are never judged dead here: their lease decides.
    """
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    return pid == os.getpid() or not process_runs(pid)


@dataclass(frozen=True)
class LeaseTable:
    """How one work table is claimed.

    ``due`` is the SQL condition of a waiting row that may start (``?`` placeholders
    bound to ``now`` as many times as it has them); ``order`` its ``ORDER BY``;
    ``claim_set`` extra assignments made by a claim (their ``?`` bound to the claim's
    ``now`` too).
    """

    table: str
    waiting_state: str
    running_state: str
    due: str
    order: str
    claim_set: str = ""

    def claimable_sql(self) -> str:
        """A waiting row that is due, or a running one whose lease has run out."""
        return (
            f"((state = '{self.waiting_state}' AND {self.due}) OR"
            f" (state = '{self.running_state}' AND lease_expires_at IS NOT NULL"
            " AND lease_expires_at <= ?))"
        )

    def claimable_parameters(self, now: float) -> tuple[float, ...]:
        """The parameters of :meth:`claimable_sql` at ``now``."""
        return (now,) * self.due.count("?") + (now,)


@dataclass(frozen=True)
class Claimed:
    """A claimed row: its id, and the owner whose expired lease it took over (if any)."""

    id: int
    previous_owner: str | None
    reclaimed: bool


def candidates_sql(spec: LeaseTable) -> str:
    """The query for the row a claim takes (parameters: :meth:`LeaseTable.claimable_parameters`).

    It is the most urgent of two candidates, each found through the ``(state, …)`` indexes:
    the first due waiting row and the first running row whose lease ran out. (One query
    with an OR of both conditions cannot use an index and reads every finished row.)
    """
    waiting = (
        f"SELECT * FROM {spec.table} WHERE state = '{spec.waiting_state}' AND {spec.due}"
        f" ORDER BY {spec.order} LIMIT 1"
    )
    expired = (
        f"SELECT * FROM {spec.table} WHERE state = '{spec.running_state}'"
        f" AND lease_expires_at IS NOT NULL AND lease_expires_at <= ? ORDER BY {spec.order} LIMIT 1"
    )
    return (
        f"SELECT id, state, owner FROM (SELECT * FROM ({waiting}) AS w"
        f" UNION ALL SELECT * FROM ({expired}) AS e) AS c ORDER BY {spec.order} LIMIT 1"
    )


def locking_candidates_sql(spec: LeaseTable) -> str:
    """PostgreSQL's candidate query: the most urgent claimable row, locked ``FOR UPDATE
    SKIP LOCKED`` so that a claimer in another process neither takes it nor waits for it
    (it takes the next one). Both conditions are index scans there (a bitmap OR)."""
    return (
        f"SELECT id, state, owner FROM {spec.table} WHERE {spec.claimable_sql()}"
        f" ORDER BY {spec.order} LIMIT 1 FOR UPDATE SKIP LOCKED"
    )


def locks_rows(cursor: Cursor) -> bool:
    """True when ``cursor`` is a server database's: claims lock their row and skip
    locked ones. (SQLite's ``BEGIN IMMEDIATE`` already serialises every writer.)"""
    return getattr(cursor, "dialect", "sqlite") == "postgresql"


def claim(
    cursor: Cursor,
    spec: LeaseTable,
    owner: str,
    now: float,
    lease_seconds: float,
) -> Claimed | None:
    """Claim the most urgent due row of ``spec.table`` for ``owner`` (inside a transaction)."""
    candidates = locking_candidates_sql(spec) if locks_rows(cursor) else candidates_sql(spec)
    while True:
        cursor.execute(candidates, spec.claimable_parameters(now))
        row = cursor.fetchone()
        if row is None:
            return None
        extra = f", {spec.claim_set}" if spec.claim_set else ""
        cursor.execute(
            f"UPDATE {spec.table} SET state = ?, owner = ?, lease_expires_at = ?{extra}"
            f" WHERE id = ? AND {spec.claimable_sql()}",
            (
                spec.running_state,
                owner,
                now + lease_seconds,
                *(now,) * spec.claim_set.count("?"),
                row["id"],
                *spec.claimable_parameters(now),
            ),
        )
        if cursor.rowcount == 1:
            reclaimed = row["state"] == spec.running_state
            return Claimed(int(row["id"]), row["owner"] if reclaimed else None, reclaimed)


def renew(
    cursor: Cursor, spec: LeaseTable, row_id: int, owner: str, now: float, lease_seconds: float
) -> bool:
    """Extend ``owner``'s lease on a running row; False when it no longer holds it."""
    cursor.execute(
        f"UPDATE {spec.table} SET lease_expires_at = ? WHERE id = ? AND owner = ?"
        f" AND state = '{spec.running_state}'",
        (now + lease_seconds, row_id, owner),
    )
    return cursor.rowcount == 1


def release_columns() -> str:
    """The assignments that end a lease (added to the ``UPDATE`` that records an outcome)."""
    return "owner = NULL, lease_expires_at = NULL"


class LeaseKeeper:
    """Renews one lease on a background thread until the work is over.

    ``renew_once`` returns False when the lease was lost (another owner took the
    row over); the keeper then stops and :attr:`lost` is set.
    """

    def __init__(self, renew_once: Callable[[], bool], interval_seconds: float) -> None:
        self._renew_once = renew_once
        self._interval = interval_seconds
        self._stop = threading.Event()
        self.lost = False
        #: Called (on the keeper's thread) once the lease is lost.
        self.on_lost: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def _run(self) -> None:
        renewed = time.monotonic()
        while not self._stop.wait(self._interval):
            late = time.monotonic() - renewed - self._interval
            try:
                held = self._renew_once()
            except Exception as exc:  # a busy database: try again at the next interval
                log.warning("lease renewal failed, retried error=%s", exc)
                continue
            if late > self._interval:  # an overloaded host: the lease is close to lapsing
                log.warning(
                    "lease renewed late seconds_late=%.1f interval_seconds=%g",
                    late,
                    self._interval,
                )
            renewed = time.monotonic()
            if not held:
                log.warning("lease lost to another owner")
                self.lost = True
                if self.on_lost is not None:
                    self.on_lost()
                return

    @contextmanager
    def held(self) -> Iterator[LeaseKeeper]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
