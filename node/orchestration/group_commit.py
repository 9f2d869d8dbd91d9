"""Group commit: instances that arrive together become durable together.

Each C-STORE (one thread per association) writes and fsyncs its own file and renames it
into the spool; what is left before it may answer success is making the new name durable
(an fsync of the series directory) and recording the row. :class:`GroupCommit` shares
that last step: whoever finds no commit pass running takes every instance waiting at
that moment, fsyncs each of their directories once and records all their rows in one
SQLite transaction; instances that arrive meanwhile wait for the next pass, taken by one
of them. Each caller returns only once its own instance is through, so the promise
(success only after the file is fsynced and its row committed) holds per instance.

A failure spoils only the instances it concerns: a directory that cannot be synced fails
the instances in it, a row that cannot be written fails that instance (its savepoint is
rolled back), and a transaction that cannot commit fails the instances of that pass.
Instances of earlier passes are already committed and are not touched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node.faults import fault_point
from node.state.series import InstanceRecord, SeriesStore


class CommitFailed(Exception):
    """This instance's directory sync or row failed; its file is not durable as accepted."""


@dataclass
class _Waiting:
    record: InstanceRecord
    now: float
    result: tuple[bool, bool] | None = None
    error: BaseException | None = None
    done: bool = False


class GroupCommit:
    """Directory fsyncs and row inserts of concurrent instances, one pass for all.

    Parameters
    ----------
    series
        Where rows are recorded (:meth:`SeriesStore.record_instance`, in one transaction).
    sync_directory
        Makes the names in a directory durable (:func:`node.spool.sync_directory`).
    """

    def __init__(self, series: SeriesStore, sync_directory: Callable[[Path], None]) -> None:
        self._series = series
        self._sync_directory = sync_directory
        self._waiting: list[_Waiting] = []
        self._waiting_lock = threading.Lock()
        self._turn = threading.Lock()  # held by the caller running a commit pass
        #: Commit passes run and instances they carried (for tests and metrics).
        self.passes = 0
        self.instances = 0

    def record(self, record: InstanceRecord, now: float) -> tuple[bool, bool]:
        """Sync ``record``'s directory and record it; return ``(added, reopened)``.

        Blocks until a commit pass carrying this instance has finished.

        Raises
        ------
        CommitFailed
            The directory could not be synced or the row not committed.
        """
        waiting = _Waiting(record, now)
        with self._waiting_lock:
            self._waiting.append(waiting)
        with self._turn:
            # Queued before taking the turn: either the pass that ran meanwhile carried
            # this instance, or it is still waiting and this caller runs the next pass.
            if not waiting.done:
                with self._waiting_lock:
                    batch, self._waiting = self._waiting, []
                self._commit(batch)
        if waiting.error is not None:
            raise CommitFailed(str(waiting.error)) from waiting.error
        assert waiting.result is not None
        return waiting.result

    def _commit(self, batch: list[_Waiting]) -> None:
        try:
            self.passes += 1
            self.instances += len(batch)
            failed: dict[Path, OSError] = {}
            for directory in dict.fromkeys(w.record.path.parent for w in batch):
                try:
                    self._sync_directory(directory)
                except OSError as exc:
                    failed[directory] = exc
            synced = []
            for waiting in batch:
                error = failed.get(waiting.record.path.parent)
                if error is not None:
                    waiting.error = error
                else:
                    synced.append(waiting)
            fault_point("instances_synced")
            if synced:
                self._record(synced)
        finally:
            for waiting in batch:
                if waiting.result is None and waiting.error is None:
                    waiting.error = RuntimeError("commit pass interrupted")
                waiting.done = True

    def _record(self, synced: list[_Waiting]) -> None:
        """One transaction; each row in its own savepoint (``record_instance`` nests)."""
        try:
            with self._series.atomically():
                for waiting in synced:
                    try:
                        waiting.result = self._series.record_instance(waiting.record, waiting.now)
                    except Exception as exc:
                        waiting.error = exc
        except Exception as exc:  # the commit failed: no row of this pass is recorded
            for waiting in synced:
                waiting.result = None
                waiting.error = exc
