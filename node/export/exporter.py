"""Delivering a job's results to its destinations, with retries for hours.

Runs in its own thread so a destination that is down never blocks
inference. Each attempt sends to the destinations still pending; failures
are retried with exponential backoff (``backoff_seconds`` doubling up to
``max_backoff_seconds``) until the next attempt would fall after the
destination's ``give_up_after_seconds`` (a day by default) or, if set, its
``max_attempts``; then the job fails with the reason. Results always stay on
disk. A destination that accepts a send releases the other jobs waiting for it
at once, and :class:`RecoveryProbe` releases them when it answers a probe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from node.config import AnyDestination
from node.contract.kinds import BUILD_ORDER, file_tag, tag_kind
from node.errors import AinodeError, ExportError
from node.export.sender import Acknowledgement
from node.export.senders import sender_for
from node.polling import PollingThread
from node.results.manifest import check_results
from node.state.dicom_audit import AuditOutcome, DicomAudit, EventType
from node.state.events import EventCode
from node.state.jobs import Job, JobQueue
from node.state.lease import owner_name

log = logging.getLogger(__name__)

#: Sends a job's files to a destination and returns what it acknowledged (default: the
#: sender of the destination's registered kind).
SendFunction = Callable[[AnyDestination, Sequence[Path]], Sequence[Acknowledgement]]


def send_by_kind(
    destination: AnyDestination, paths: Sequence[Path], *, calling_ae: str
) -> list[Acknowledgement]:
    """Send with the sender of the destination's kind (C-STORE, STOW-RS, …)."""
    return sender_for(destination, calling_ae=calling_ae).send(paths)


def check_reachable(destination: AnyDestination, *, calling_ae: str) -> None:
    """Probe a destination with its kind's probe (C-ECHO, QIDO-RS, …); raise unless it
    answers with success."""
    answer = sender_for(destination, calling_ae=calling_ae).probe()
    if answer.status != 0:
        raise ExportError(answer.message, status=answer.status)


def check_acknowledged(
    destination: AnyDestination, paths: Sequence[Path], acknowledged: Sequence[Acknowledgement]
) -> None:
    """Raise :class:`ExportError` unless every file sent was acknowledged, so a job is
    never marked sent for files the destination did not confirm."""
    missing = sorted(set(paths) - {ack.path for ack in acknowledged}, key=lambda p: p.name)
    if missing:
        raise ExportError(
            f"{destination.peer()} acknowledged {len(paths) - len(missing)} of {len(paths)}"
            f" result files (not {', '.join(path.name for path in missing[:3])}"
            f"{', …' if len(missing) > 3 else ''})"
        )


def retry_delay(destination: AnyDestination, attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    return float(
        min(destination.backoff_seconds * 2 ** (attempt - 1), destination.max_backoff_seconds)
    )


def result_files(result_dir: Path, tags: frozenset[str] | None = None) -> list[Path]:
    """Result files of a job to send to a destination whose profile gives ``tags``.

    Files are named ``<tag>_<SOPInstanceUID>.dcm`` (:mod:`node.contract.kinds`); those
    whose tag is in ``tags`` (all when ``tags`` is None) are returned in build order
    (SEGs before the SRs that reference them), then by name. Files whose name carries
    no result tag (put there by hand or by another tool) go to every destination, last.
    """
    tagged = []
    untagged = []
    for path in result_dir.glob("*.dcm"):
        tag = file_tag(path.name)
        if tag is None:
            untagged.append(path)
        elif tags is None or tag in tags:
            tagged.append((BUILD_ORDER.index(tag_kind(tag)), path.name, path))
    return [path for _, _, path in sorted(tagged)] + sorted(untagged)


def release_waiting(
    queue: JobQueue,
    name: str,
    now: float,
    reason: str,
    wake: Callable[[], object],
    *,
    exclude: int | None = None,
) -> None:
    """Make the jobs waiting for destination ``name`` due now (it is back); log and wake."""
    released = queue.release_waiting(name, now, reason, exclude=exclude)
    if released:
        log.info(
            "destination back: waiting jobs released destination=%s job_ids=%s",
            name,
            ",".join(map(str, released)),
        )
        wake()


class Exporter(PollingThread):
    """Claims exporting jobs and sends their result files."""

    def __init__(
        self,
        queue: JobQueue,
        destinations: Callable[[], Mapping[str, AnyDestination]],
        *,
        calling_ae: str,
        clock: Callable[[], float],
        sender: SendFunction | None = None,
        audit: DicomAudit | None = None,
        node_name: str = "",
    ) -> None:
        super().__init__("exporter")
        #: Who holds the exports this exporter sends (``host:pid:exporter[@<node name>]``).
        self.owner = owner_name("exporter", node_name)
        self._audit = audit
        self._queue = queue
        self._destinations = destinations
        self._clock = clock
        self._send = sender or (lambda d, p: send_by_kind(d, p, calling_ae=calling_ae))
        self._calling_ae = calling_ae
        self._sent: Counter[tuple[str, str]] = Counter()  # (destination, objects|bytes)
        self._sent_lock = threading.Lock()

    def sent_counts(self) -> dict[tuple[str, str], int]:
        """Objects and bytes sent per destination since start: ``{(name, kind): n}``."""
        with self._sent_lock:
            return dict(self._sent)

    def run_once(self) -> bool:
        """Make one export attempt for the next due job; False when none was due."""
        job = self._queue.claim_export(self._clock(), self.owner)
        if job is None:
            return False
        # The export's lease is renewed while it sends, so that no other exporter (of this
        # or another node sharing the state) sends it too; if this process dies, the lease
        # runs out and another exporter takes the job over.
        with self._queue.keep_export_lease(job, self._clock).held():
            self._attempt(job)
        return True

    def _attempt(self, job: Job) -> None:
        assert job.result_dir is not None
        if job.shadow:  # never reached through the queue; a guard against any other path
            self._queue.finish(job.id, self._clock(), "shadow mode: nothing sent", owner=self.owner)
            log.info("shadow job not sent job_id=%d", job.id)
            return
        problem = check_results(job.result_dir)
        if problem is not None:  # never send results that are not the ones the job built
            self._queue.rebuild(job.id, problem, self._clock(), owner=self.owner)
            log.error("results incomplete, job rebuilt job_id=%d problem=%s", job.id, problem)
            return
        destinations = self._destinations()
        pending: list[str] = []
        errors: list[str] = []
        for name in job.pending_destinations:
            destination = destinations.get(name)
            if destination is None:
                self._queue.fail(
                    job.id,
                    f"destination {name!r} is no longer configured",
                    self._clock(),
                    owner=self.owner,
                )
                return
            files = result_files(job.result_dir, destination.result_tags)
            if not files:
                # Nothing will appear by retrying: the job fails once the others are sent.
                log.warning(
                    "no result files for destination job_id=%d destination=%s results=%s",
                    job.id,
                    name,
                    ",".join(destination.results),
                )
                self._queue.add_event(
                    job.id,
                    self._clock(),
                    EventCode.EXPORT_NOT_SENT,
                    f"{name}: {_unfilled_reason(destination)}",
                )
                continue
            try:
                check_acknowledged(destination, files, self._send(destination, files))
            except (AinodeError, OSError, RuntimeError, ValueError) as exc:
                errors.append(f"{name}: {exc}")
                pending.append(name)
                self._audit_sent(
                    job, name, destination, files, AuditOutcome.SERIOUS_FAILURE, str(exc)
                )
                log.warning(
                    "export failed job_id=%d destination=%s attempt=%d error=%s",
                    job.id,
                    name,
                    job.export_attempts,
                    exc,
                )
            else:
                size = sum(path.stat().st_size for path in files)
                with self._sent_lock:
                    self._sent[(name, "objects")] += len(files)
                    self._sent[(name, "bytes")] += size
                now = self._clock()
                self._audit_sent(job, name, destination, files, AuditOutcome.SUCCESS, "")
                self._queue.add_event(job.id, now, EventCode.EXPORT_SENT, name)
                self._release(name, now, f"{name} accepted job {job.id}'s results", job.id)
        now = self._clock()
        if not pending:
            unfilled = [
                name
                for name in job.destinations
                if name in destinations
                and not result_files(job.result_dir, destinations[name].result_tags)
            ]
            if unfilled:
                self._fail_unfilled(job, unfilled, destinations, now)
                return
            self._queue.finish(
                job.id, now, f"sent to {', '.join(job.pending_destinations)}", owner=self.owner
            )
            log.info("job done job_id=%d destinations=%s", job.id, ",".join(job.destinations))
            return
        message = "; ".join(errors)
        started = self._queue.export_started_at(job.id) or now
        exhausted = [name for name in pending if _exhausted(destinations[name], job, started, now)]
        if exhausted:
            self._queue.fail(
                job.id,
                f"export failed after {job.export_attempts} attempts in"
                f" {_duration(now - started)}: {message} (results kept in {job.result_dir})",
                now,
                code=EventCode.EXPORT_FAILED,
                owner=self.owner,
            )
            return
        delay = min(retry_delay(destinations[name], job.export_attempts) for name in pending)
        retry_at = now + delay
        at = datetime.fromtimestamp(retry_at, UTC).isoformat(timespec="seconds")
        self._queue.export_progress(
            job.id,
            pending,
            now,
            retry_at=retry_at,
            error=message,
            detail=f"waiting for {', '.join(pending)}: {message}; attempt {job.export_attempts}"
            f" failed, next attempt in {_duration(delay)} (at {at}) or as soon as"
            " the destination answers",
            owner=self.owner,
        )

    def _audit_sent(
        self,
        job: Job,
        name: str,
        destination: AnyDestination,
        files: Sequence[Path],
        outcome: AuditOutcome,
        error: str,
    ) -> None:
        """Audit one send of ``job``'s results to destination ``name`` (to whom, how many)."""
        if self._audit is None:
            return
        peer = destination.peer()
        detail = f"job {job.id} attempt {job.export_attempts}" + (f": {error}" if error else "")
        self._audit.record_safely(
            EventType.RESULTS_SENT,
            outcome=outcome,
            actor=self._calling_ae,
            peer=peer,
            destination=name,
            study_uid=job.study_uid,
            series_uid=job.series_uid,
            instances=len(files),
            detail=detail,
        )

    def _release(self, name: str, now: float, reason: str, exclude: int | None = None) -> None:
        release_waiting(self._queue, name, now, reason, self.wake, exclude=exclude)

    def _fail_unfilled(
        self,
        job: Job,
        unfilled: list[str],
        destinations: Mapping[str, AnyDestination],
        now: float,
    ) -> None:
        """Fail a job whose destinations ``unfilled`` were sent none of what they take."""
        reasons = "; ".join(f"{name}: {_unfilled_reason(destinations[name])}" for name in unfilled)
        sent = [name for name in job.destinations if name not in unfilled]
        message = f"nothing sent to {', '.join(unfilled)} ({reasons})"
        if sent:
            message += f"; sent to {', '.join(sent)}"
        self._queue.fail(job.id, message, now, pending=unfilled, owner=self.owner)
        log.warning(
            "job failed job_id=%d reason=destinations_sent_nothing destinations=%s",
            job.id,
            ",".join(unfilled),
        )


def _unfilled_reason(destination: AnyDestination) -> str:
    return (
        f"none of the result kinds it takes ({', '.join(destination.results)}) was built;"
        " the job's results_skipped events say why"
    )


def _exhausted(destination: AnyDestination, job: Job, started: float, now: float) -> bool:
    """No attempt is left: the attempt count is used up, or the next one would fall
    after the time budget."""
    if destination.max_attempts is not None and job.export_attempts >= destination.max_attempts:
        return True
    next_at = now + retry_delay(destination, job.export_attempts)
    return next_at - started > destination.give_up_after_seconds


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class RecoveryProbe(PollingThread):
    """Probes destinations that jobs wait for; one that answers releases them at once.

    Each destination is probed at most every ``probe_seconds`` of its own settings,
    and only while a job waits for it in backoff.
    """

    idle_seconds = 1.0

    def __init__(
        self,
        queue: JobQueue,
        destinations: Callable[[], Mapping[str, AnyDestination]],
        *,
        calling_ae: str,
        clock: Callable[[], float],
        on_release: Callable[[], None],
        reachable: Callable[[AnyDestination], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__("export-probe")
        self._queue = queue
        self._destinations = destinations
        self._clock = clock
        self._on_release = on_release
        self._reachable = reachable or (lambda d: check_reachable(d, calling_ae=calling_ae))
        self._monotonic = monotonic
        self._last_probe: dict[str, float] = {}

    def run_once(self) -> bool:
        """Probe the waited-for destinations that are due; always returns False (idle)."""
        configured = self._destinations()
        for name in sorted(self._queue.waiting_destinations(self._clock())):
            destination = configured.get(name)
            last = self._last_probe.get(name)
            if destination is None or (
                last is not None and self._monotonic() - last < destination.probe_seconds
            ):
                continue
            self._last_probe[name] = self._monotonic()
            try:
                self._reachable(destination)
            except (AinodeError, OSError, RuntimeError, ValueError) as exc:
                log.debug("probe failed destination=%s error=%s", name, exc)
                continue
            release_waiting(
                self._queue, name, self._clock(), f"{name} answered the probe", self._on_release
            )
        return False
