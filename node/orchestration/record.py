"""The last step of a job: write what :func:`~node.orchestration.execute.execute` did
into the job's timeline and state; the only step that touches the job table for the
job's outcome.

The events come first, in the order they happened; then the job ends ``exporting``
(``done`` without destinations) with its result directory, ``skipped`` with the
refused checks, or ``failed`` with ``"Type: message"``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from node.orchestration.job import DONE, SKIPPED, JobOutput
from node.state.jobs import Job, JobQueue

log = logging.getLogger(__name__)


def record_events(
    queue: JobQueue, output: JobOutput, clock: Callable[[], float], since: float | None = None
) -> None:
    """Add the job's events to its timeline, each dated when it happened (counted back
    from now by the executor's timings; never before ``since``, the job's start)."""
    now = clock()
    for event, detail, offset in output.events:
        at = now - max(0.0, output.elapsed - offset)
        queue.add_event(output.job_id, at if since is None else max(at, since), event, detail)


def record_end(
    queue: JobQueue,
    job: Job,
    output: JobOutput,
    clock: Callable[[], float],
    *,
    owner: str | None = None,
) -> None:
    """Set the job's state from ``output`` (raises when the database refuses).

    ``owner``: the worker holding the job's lease; when another owner took the job over
    (this one's lease ran out), the state is left to it.
    """
    if output.outcome == DONE:
        assert output.result_dir is not None
        queue.inference_done(job.id, output.result_dir, clock(), owner=owner)
        seconds = output.seconds
        log.info(
            "results written job_id=%d plugin=%s objects=%d dir=%s load=%.2fs infer=%.2fs"
            " encode=%.2fs",
            job.id,
            job.plugin,
            len(output.files),
            output.result_dir,
            seconds.get("load", 0.0),
            seconds.get("infer", 0.0),
            seconds.get("encode", 0.0),
        )
    elif output.outcome == SKIPPED:
        queue.skip(
            job.id,
            output.message or "",
            clock(),
            source=output.source or "",
            checks=[dict(check) for check in output.checks],
            owner=owner,
        )
    else:
        queue.fail(job.id, output.reason or "", clock(), owner=owner)


def log_end(job: Job, output: JobOutput) -> None:
    """One line for a job that did not end done (no patient data)."""
    if output.outcome == SKIPPED:
        log.warning(
            "job skipped job_id=%d plugin=%s source=%s checks=%s",
            job.id,
            job.plugin,
            output.source,
            ",".join(c["check"] for c in output.checks),
        )
    elif output.outcome != DONE:
        log.error("job failed job_id=%d plugin=%s reason=%s", job.id, job.plugin, output.reason)


def record(
    job: Job,
    output: JobOutput,
    queue: JobQueue,
    clock: Callable[[], float],
    *,
    owner: str | None = None,
) -> None:
    """Events, then the end state, in one go (the worker retries the end state alone)."""
    record_events(queue, output, clock, job.started_at)
    log_end(job, output)
    record_end(queue, job, output, clock, owner=owner)
