"""Delivering a job's results to its destinations, with bounded retries.

Runs in its own thread so a destination that is down never blocks
inference. Each attempt sends to the destinations still pending; failures
are retried with exponential backoff (``backoff_seconds`` doubling up to
``max_backoff_seconds``) until the destination's ``max_attempts``, after
which the job fails with the reason. Results always stay on disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from node.config import AnyDestination, DestinationSettings, DicomWebDestinationSettings
from node.errors import AinodeError
from node.export.dimse import send_files
from node.export.stow import stow_files
from node.jobs.queue import Job, JobQueue
from node.polling import PollingThread
from node.results.kinds import BUILD_ORDER, file_tag, tag_kind
from node.results.manifest import check_results

log = logging.getLogger(__name__)

Sender = Callable[[AnyDestination, Sequence[Path]], None]


def send_by_kind(destination: AnyDestination, paths: Sequence[Path], *, calling_ae: str) -> None:
    """C-STORE to a DIMSE destination, STOW-RS to a DICOMweb one."""
    if isinstance(destination, DicomWebDestinationSettings):
        stow_files(destination, paths)
    else:
        send_files(destination, paths, calling_ae=calling_ae)


def retry_delay(
    destination: DestinationSettings | DicomWebDestinationSettings, attempt: int
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    return float(
        min(destination.backoff_seconds * 2 ** (attempt - 1), destination.max_backoff_seconds)
    )


def result_files(result_dir: Path, tags: frozenset[str] | None = None) -> list[Path]:
    """Result files of a job to send to a destination whose profile gives ``tags``.

    Files are named ``<tag>_<SOPInstanceUID>.dcm`` (:mod:`node.results.kinds`); those
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


class Exporter(PollingThread):
    """Claims exporting jobs and sends their result files."""

    def __init__(
        self,
        queue: JobQueue,
        destinations: Callable[[], Mapping[str, AnyDestination]],
        *,
        calling_ae: str,
        clock: Callable[[], float],
        sender: Sender | None = None,
    ) -> None:
        super().__init__("exporter")
        self._queue = queue
        self._destinations = destinations
        self._clock = clock
        self._send = sender or (lambda d, p: send_by_kind(d, p, calling_ae=calling_ae))

    def run_once(self) -> bool:
        """Make one export attempt for the next due job; False when none was due."""
        job = self._queue.claim_export(self._clock())
        if job is None:
            return False
        self._attempt(job)
        return True

    def _attempt(self, job: Job) -> None:
        assert job.result_dir is not None
        if job.shadow:  # never reached through the queue; a guard against any other path
            self._queue.finish(job.id, self._clock(), "shadow mode: nothing sent")
            log.info("shadow job not sent job_id=%d", job.id)
            return
        problem = check_results(job.result_dir)
        if problem is not None:  # never send results that are not the ones the job built
            self._queue.rebuild(job.id, problem, self._clock())
            log.error("results incomplete, job rebuilt job_id=%d problem=%s", job.id, problem)
            return
        destinations = self._destinations()
        pending: list[str] = []
        errors: list[str] = []
        exhausted = False
        for name in job.pending_destinations:
            destination = destinations.get(name)
            if destination is None:
                self._queue.fail(
                    job.id, f"destination {name!r} is no longer configured", self._clock()
                )
                return
            files = result_files(job.result_dir, destination.result_tags)
            if not files:
                log.warning(
                    "no result files for destination job_id=%d destination=%s results=%s",
                    job.id,
                    name,
                    ",".join(destination.results),
                )
                self._queue.add_event(job.id, self._clock(), "sent", f"{name} (nothing to send)")
                continue
            try:
                self._send(destination, files)
            except (AinodeError, OSError, RuntimeError, ValueError) as exc:
                errors.append(f"{name}: {exc}")
                pending.append(name)
                exhausted = exhausted or job.export_attempts >= destination.max_attempts
                log.warning(
                    "export failed job_id=%d destination=%s attempt=%d error=%s",
                    job.id,
                    name,
                    job.export_attempts,
                    exc,
                )
            else:
                self._queue.add_event(job.id, self._clock(), "sent", name)
        now = self._clock()
        if not pending:
            self._queue.finish(job.id, now, f"sent to {', '.join(job.pending_destinations)}")
            log.info("job done job_id=%d destinations=%s", job.id, ",".join(job.destinations))
            return
        message = "; ".join(errors)
        if exhausted:
            self._queue.fail(
                job.id,
                f"export failed after {job.export_attempts} attempts: {message}"
                f" (results kept in {job.result_dir})",
                now,
            )
            return
        delay = min(retry_delay(destinations[name], job.export_attempts) for name in pending)
        self._queue.export_progress(job.id, pending, now, retry_at=now + delay, error=message)
