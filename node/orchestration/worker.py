"""The inference worker: one long-lived thread per device that claims jobs.

It claims the most urgent queued job and runs it in three steps:
:func:`~node.orchestration.prepare.prepare` reads what the job needs from the state
stores, an :class:`~node.orchestration.executor.Executor` runs
:func:`~node.orchestration.execute.execute` (load, gate, check, infer, build and write
the result files under ``results/<study>/<series>/job-<id>/``) and
:func:`~node.orchestration.record.record` writes the events and the end state. A job
whose input the gate or the routine's ``Accepts`` refuses ends ``skipped`` with the
failed checks; one that raises is failed with the exception text. The worker carries
on with the next one. By default the executor is a
:class:`~node.orchestration.executor.LocalExecutor` on the worker's device, which reads
the next queued series while a job runs; each job has a deadline (plugins check it
between steps with :meth:`RunContext.raise_if_expired`) and a job that ends past it is
failed, its results discarded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from node.config import AnyDestination, RuleSettings
from node.orchestration.execute import lease_lost
from node.orchestration.executor import (
    Executor,
    JobLost,
    LocalExecutor,
    QueueingExecutor,
)
from node.orchestration.job import DONE, JobOutput
from node.orchestration.prepare import Sources, prepare
from node.orchestration.read_ahead import QuietReads
from node.orchestration.record import log_end, record_end, record_events
from node.orchestration.registry import PluginRegistry
from node.polling import PollingThread
from node.state.events import EventCode
from node.state.jobs import Job, JobQueue
from node.state.lease import LeaseKeeper, owner_name
from node.state.series import SeriesStore

log = logging.getLogger(__name__)

#: First and longest wait between two attempts to record a failed job.
RECORD_RETRY_SECONDS = 0.5
RECORD_RETRY_MAX_SECONDS = 30.0


class InferenceWorker(PollingThread):
    """Claims queued jobs one at a time for one device: prepare, execute, record."""

    def __init__(
        self,
        queue: JobQueue,
        series: SeriesStore,
        registry: PluginRegistry,
        *,
        device: torch.device,
        results_dir: Path,
        templates_dir: Path | None,
        clock: Callable[[], float],
        on_results: Callable[[], None] = lambda: None,
        job_timeout_seconds: float | None = None,
        prefetch: bool = True,
        monotonic: Callable[[], float] = time.monotonic,
        destinations: Callable[[], Mapping[str, AnyDestination]] = dict,
        rules: Callable[[], Sequence[RuleSettings]] = list,
        executor: Executor | None = None,
        node_name: str = "",
        quiet_reads: QuietReads | None = None,
    ) -> None:
        super().__init__(f"worker-{device}")
        self._queue = queue
        self._clock = clock
        self._on_results = on_results
        self.device = device
        self._sources = Sources(
            queue,
            series,
            registry,
            device,
            results_dir,
            templates_dir,
            job_timeout_seconds,
            read_ahead=prefetch,
            destinations=destinations,
            rules=rules,
        )
        self._owns_executor = executor is None
        self._executor: Executor = executor or LocalExecutor(
            registry, [device], monotonic=monotonic, quiet_reads=quiet_reads
        )
        #: Why the worker cannot record a job's state (for ``/readyz``), or None.
        self.problem: str | None = None
        #: Who holds this worker's jobs (``host:pid:worker-<device>[@<node name>]``; the
        #: job's lease owner).
        self.owner = owner_name(f"worker-{device}", node_name)

    def run_once(self) -> bool:
        """Run the next queued job to its end; False when the queue was empty."""
        job = self._queue.claim_next(self._clock(), self.owner)
        if job is None:
            return False
        # The lease is renewed while the job runs and until its end is recorded.
        with self._keep_lease(job).held():
            try:
                output = self._executor.submit(prepare(job, self._sources)).result()
            except Exception as exc:  # prepare failed, or the executor lost the job
                output = JobOutput(job.id, DONE).failed(exc)
            self._record(job, output)
        return True

    def _keep_lease(self, job: Job) -> LeaseKeeper:
        """The keeper of ``job``'s lease; losing it to another holder stops the job at its
        next check (as a job past its deadline stops)."""
        keeper = self._queue.keep_lease(job, self._clock)

        def lost() -> None:
            if self._holder(job) is not None:
                lease_lost(job.id, self.owner)

        keeper.on_lost = lost
        return keeper

    def _holder(self, job: Job) -> str | None:
        """Who holds ``job`` now when this worker no longer does (None: this worker, or
        the job ended, e.g. cancelled)."""
        now = self._queue.get(job.id)
        if now is None or now.state not in ("queued", "running", "exporting"):
            return None
        if now.state != "queued" and now.owner == self.owner:
            return None
        return now.owner or f"the queue ({now.state})"

    def _record(self, job: Job, output: JobOutput) -> None:
        """Record ``output``: its events, then the end state (retried unless done). A job
        whose lease another holder took records only a ``job.lease_lost`` event."""
        try:
            holder = self._holder(job)
        except Exception:  # the database refuses: the end state's retries deal with it
            holder = None
        if holder is not None:
            log.warning("lease lost, outcome not recorded job_id=%d", job.id)
            self._queue.add_event(
                job.id,
                self._clock(),
                EventCode.JOB_LEASE_LOST,
                f"{self.owner} lost its lease to {holder}; its outcome not recorded:"
                f" {output.outcome}",
            )
            return
        try:
            record_events(self._queue, output, self._clock, job.started_at)
            if output.outcome == DONE:
                record_end(self._queue, job, output, self._clock, owner=self.owner)
                self._on_results()
                return
        except Exception as exc:  # e.g. the database refuses: the job fails
            output = output.failed(exc)
        log_end(job, output)
        self._record_outcome(
            job,
            output.outcome,
            lambda: record_end(self._queue, job, output, self._clock, owner=self.owner),
        )

    def _record_outcome(self, job: Job, outcome: str, record: Callable[[], None]) -> None:
        """Record ``job``'s end (``failed`` or ``skipped``) by calling ``record``, retrying
        until the database takes it (e.g. a full disk).

        Meanwhile :attr:`problem` says why (``/readyz`` reports it) and the worker
        takes no other job: a job is never left ``running`` while the node is up.
        """
        delay = RECORD_RETRY_SECONDS
        while True:
            try:
                record()
            except Exception as exc:
                if self.problem is None:
                    log.error(
                        "cannot record a %s job, retrying job_id=%d error=%s", outcome, job.id, exc
                    )
                self.problem = f"cannot record job {job.id} as {outcome}: {exc}"
                if self._stop.wait(delay):  # stopping: the restart re-queues the job
                    return
                delay = min(delay * 2, RECORD_RETRY_MAX_SECONDS)
                continue
            if self.problem is not None:
                log.info("%s job recorded after retries job_id=%d", outcome, job.id)
                self.problem = None
            return

    def stop(self, timeout: float = 60.0) -> None:
        super().stop(timeout)
        if self._owns_executor:
            self._executor.shutdown()


@dataclass
class _Away:
    """A job submitted and not yet recorded: its lease is renewed until then."""

    job: Job
    lease: ExitStack
    future: Future[JobOutput]


class PipelinedWorker(InferenceWorker):
    """Keeps several jobs at a :class:`QueueingExecutor` (e.g. on Ray actors).

    It claims the most urgent queued job while the executor has room (so jobs leave the
    queue in priority order and no more are held than the executor can run soon), renews
    each claimed job's lease while it is away, and records each as it comes back. A job
    the executor lost (:class:`JobLost`: its actor or machine died) goes back to the
    queue with a ``job.requeued`` event and runs again.
    """

    def __init__(
        self,
        queue: JobQueue,
        series: SeriesStore,
        registry: PluginRegistry,
        *,
        executor: QueueingExecutor,
        **kwargs: Any,
    ) -> None:
        super().__init__(queue, series, registry, executor=executor, **kwargs)
        self._pipeline: QueueingExecutor = executor
        self._away: dict[int, _Away] = {}

    @property
    def away(self) -> int:
        """Jobs claimed by this worker and not yet recorded."""
        return len(self._away)

    def run_once(self) -> bool:
        busy = self._collect()
        while self._pipeline.has_room() and not self._stop.is_set():
            job = self._queue.claim_next(self._clock(), self.owner)
            if job is None:
                break
            busy = True
            lease = ExitStack()
            lease.enter_context(self._keep_lease(job).held())
            try:
                future = self._pipeline.submit(prepare(job, self._sources))
            except Exception as exc:  # prepare failed, or the executor refused the job
                future = Future()
                future.set_exception(exc)
            self._away[job.id] = _Away(job, lease, future)
            future.add_done_callback(lambda _: self.wake())
        return busy

    def _collect(self) -> bool:
        """Record the jobs that came back; re-queue those the executor lost."""
        done = [away for away in self._away.values() if away.future.done()]
        for away in done:
            del self._away[away.job.id]
            try:
                output = away.future.result()
            except JobLost as exc:
                away.lease.close()
                self._requeue(away.job, str(exc))
                continue
            except Exception as exc:
                output = JobOutput(away.job.id, DONE).failed(exc)
            with away.lease:
                self._record(away.job, output)
        return bool(done)

    def _requeue(self, job: Job, reason: str) -> None:
        if self._queue.requeue(job.id, self.owner, self._clock(), reason):
            log.warning("job re-queued job_id=%d reason=%s", job.id, reason)
        else:
            log.warning("lost job no longer held, not re-queued job_id=%d", job.id)

    def stop(self, timeout: float = 60.0) -> None:
        super().stop(timeout)
        self._collect()
        for away in list(self._away.values()):  # not recorded: they run again
            away.lease.close()
            if not away.future.done():
                away.future.cancel()
            self._requeue(away.job, "node stopped while the job was away")
        self._away.clear()
