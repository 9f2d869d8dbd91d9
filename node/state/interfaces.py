"""What the state stores need of a database, and what the layers above need of the stores.

The stores are written against :class:`Cursor` and :class:`Connection` (DB-API 2
shaped: ``?`` placeholders, rows addressable by column name) so that a PostgreSQL
implementation can follow; nothing above :mod:`node.state` sees a ``sqlite3`` type.
The store protocols list what orchestration, network, API and admin call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from node.state.events import EventCode
    from node.state.jobs import Job, JobEvent
    from node.state.lease import LeaseKeeper
    from node.state.metrics import JobDurations, QualitySkips
    from node.state.pulls import Pull

#: A fetched row: values by column name.
Row = Mapping[str, Any]


class Cursor(Protocol):
    """The part of a DB-API cursor the stores use."""

    @property
    def rowcount(self) -> int: ...

    @property
    def lastrowid(self) -> int | None: ...

    def execute(self, sql: str, parameters: Sequence[object] = ..., /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """A state database: short write transactions and read queries."""

    def transaction(self) -> AbstractContextManager[Cursor]: ...

    def query(self, sql: str, parameters: tuple[object, ...] = ()) -> Sequence[Any]: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


class JobStore(Protocol):
    """The job queue as the worker, exporter, dispatcher, API and admin use it."""

    lease_seconds: float

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
    ) -> int: ...

    def add_event(self, job_id: int, now: float, code: EventCode, detail: str = "") -> None: ...

    def claim_next(self, now: float, owner: str | None = None) -> Job | None: ...

    def renew_lease(self, job_id: int, owner: str, now: float) -> bool: ...

    def keep_lease(self, job: Job, clock: Callable[[], float]) -> LeaseKeeper: ...

    def inference_done(
        self, job_id: int, result_dir: Path, now: float, *, owner: str | None = None
    ) -> Job: ...

    def claim_export(self, now: float) -> Job | None: ...

    def fail(
        self,
        job_id: int,
        error: str,
        now: float,
        *,
        pending: list[str] | None = None,
        code: EventCode = ...,
        owner: str | None = None,
    ) -> None: ...

    def finish(self, job_id: int, now: float, detail: str = "") -> None: ...

    def requeue_interrupted(self, now: float) -> list[int]: ...

    def get(self, job_id: int) -> Job | None: ...

    def jobs(self, *, state: str | None = None, series_uid: str | None = None) -> list[Job]: ...

    def events(self, job_id: int) -> list[JobEvent]: ...

    def depth(self) -> dict[str, int]: ...


class PullStoreInterface(Protocol):
    """Pull requests as the puller and the API use them."""

    def claim(self, now: float, owner: str | None = None) -> Pull | None: ...

    def renew_lease(self, pull_id: int, owner: str, now: float) -> bool: ...

    def requeue_interrupted(self, now: float) -> list[int]: ...

    def get(self, pull_id: int) -> Pull | None: ...

    def recent(self, limit: int = 100) -> list[Pull]: ...


class MetricsStore(Protocol):
    """The counts ``/metrics`` derives from the state (they survive restarts)."""

    def series_completions(self) -> int: ...

    def job_durations(self, buckets: Sequence[float]) -> list[JobDurations]: ...

    def export_failures(self) -> int: ...

    def quality_skips(self) -> list[QualitySkips]: ...


if TYPE_CHECKING:
    from node.state.db import Database
    from node.state.jobs import JobQueue
    from node.state.metrics import MetricsQueries
    from node.state.pulls import PullStore

    def _sqlite_implements_the_interfaces(
        db: Database, jobs: JobQueue, pulls: PullStore, metrics: MetricsQueries
    ) -> tuple[Connection, JobStore, PullStoreInterface, MetricsStore]:
        """Checked by mypy: the SQLite stores are implementations of the protocols above."""
        return db, jobs, pulls, metrics
