"""What the layers above need of the state stores: one protocol per store.

Orchestration, network, API and admin call these; the SQLite stores implement them
(checked by mypy at the end of this module) and a PostgreSQL implementation can follow.
The stores themselves are written against :mod:`node.state.connection`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from node.state.connection import Connection

if TYPE_CHECKING:
    from node.state.events import EventCode
    from node.state.jobs import Job, JobEvent
    from node.state.lease import LeaseKeeper
    from node.state.metrics import JobDurations, QualitySkips
    from node.state.pulls import Pull
    from node.state.workitems import Subscription, Workitem


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

    def next_queued(self) -> Job | None: ...

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


class WorkitemStoreInterface(Protocol):
    """UPS workitems and subscriptions as the worklist service and performer use them."""

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
    ) -> Workitem: ...

    def get(self, uid: str) -> Workitem | None: ...

    def all(self, *, state: str | None = None, limit: int = 1000) -> list[Workitem]: ...

    def for_job(self, job_id: int) -> Workitem | None: ...

    def change(
        self, uid: str, decide: Callable[[Workitem], Workitem | None], now: float
    ) -> tuple[Workitem, Workitem]: ...

    def subscribe(
        self,
        ae_title: str,
        workitem_uid: str,
        *,
        deletion_lock: bool,
        filter: dict[str, str] | None,
        now: float,
    ) -> None: ...

    def unsubscribe(self, ae_title: str, workitem_uid: str) -> int: ...

    def suspend_global(self, ae_title: str) -> int: ...

    def subscriptions(
        self, *, ae_title: str | None = None, workitem_uid: str | None = None
    ) -> list[Subscription]: ...

    def global_subscriptions(self) -> list[Subscription]: ...


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
    from node.state.workitems import WorkitemStore

    def _sqlite_implements_the_interfaces(
        db: Database,
        jobs: JobQueue,
        pulls: PullStore,
        metrics: MetricsQueries,
        workitems: WorkitemStore,
    ) -> tuple[Connection, JobStore, PullStoreInterface, MetricsStore, WorkitemStoreInterface]:
        """Checked by mypy: the SQLite stores are implementations of the protocols above."""
        return db, jobs, pulls, metrics, workitems
