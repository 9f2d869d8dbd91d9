"""Job event codes: the one contract for what a ``job_events`` row records.

Every event is written with an :class:`EventCode` (the ``code`` column). Metrics,
the console and tests select events by code, never by the wording of ``detail``,
which is free text for people. The ``event`` column keeps the short name that
nodes before issue 12 wrote (and the timeline shows); several codes may share one
name (``job.failed`` and ``export.failed`` are both ``failed``).
"""

from __future__ import annotations

from enum import StrEnum


class EventCode(StrEnum):
    """What happened to a job (``<area>.<what>``)."""

    JOB_QUEUED = "job.queued"
    JOB_STARTED = "job.started"
    JOB_REQUEUED = "job.requeued"
    #: An executor sent the job away to run (e.g. to a Ray actor: which one, on which node).
    JOB_SUBMITTED = "job.submitted"
    #: Another owner took a running job whose lease had expired (its worker died or hung).
    JOB_LEASE_EXPIRED = "job.lease_expired"
    #: A worker finished a job another owner had taken over: its outcome is not recorded.
    JOB_LEASE_LOST = "job.lease_lost"
    JOB_DONE = "job.done"
    JOB_FAILED = "job.failed"
    JOB_SKIPPED = "job.skipped"
    JOB_CANCELLED = "job.cancelled"
    JOB_RETRIED = "job.retried"
    JOB_RERUN = "job.rerun"
    JOB_RERUN_OF = "job.rerun_of"
    JOB_PRIORITY_CHANGED = "job.priority_changed"
    JOB_FINISHED_AFTER_CANCEL = "job.finished_after_cancel"
    JOB_ERROR_AFTER_CANCEL = "job.error_after_cancel"
    JOB_SKIPPED_AFTER_CANCEL = "job.skipped_after_cancel"
    SERIES_RERUN = "series.rerun"
    #: Timeline entries from the series row (shown with a job's events, not stored).
    SERIES_RECEIVED = "series.received"
    SERIES_COMPLETE = "series.complete"
    COMPLETION_HELD = "completion.held"
    COMPLETION_NOTE = "completion.note"
    QUALITY_CHECKED = "quality.checked"
    QUALITY_SKIPPED = "quality.skipped"
    QUALITY_WARNING = "quality.warning"
    QUALITY_IGNORED = "quality.ignored"
    VOLUME_LOADED = "inference.volume_loaded"
    PRIOR_FOUND = "inference.prior_found"
    INFERENCE_DONE = "inference.done"
    #: Where a remote executor ran the job (host, actor, input directory, transfer times).
    INFERENCE_REMOTE = "inference.remote"
    RESULTS_ENCODED = "results.encoded"
    RESULTS_WRITTEN = "results.written"
    RESULTS_SKIPPED = "results.skipped"
    RESULTS_STALE_REMOVED = "results.stale_removed"
    RESULTS_INCOMPLETE = "results.incomplete"
    EXPORT_SENT = "export.sent"
    EXPORT_NOT_SENT = "export.not_sent"
    EXPORT_RETRY = "export.retry"
    EXPORT_RELEASED = "export.released"
    #: The export gave up (attempts or time budget spent): the job ends ``failed``.
    EXPORT_FAILED = "export.failed"

    @property
    def event(self) -> str:
        """The short event name stored beside the code (the timeline's label)."""
        return EVENT_NAMES[self]


#: The ``event`` column for each code (the names nodes wrote before codes existed).
EVENT_NAMES: dict[EventCode, str] = {
    EventCode.JOB_QUEUED: "queued",
    EventCode.JOB_STARTED: "started",
    EventCode.JOB_REQUEUED: "requeued",
    EventCode.JOB_SUBMITTED: "submitted",
    EventCode.JOB_LEASE_EXPIRED: "lease_expired",
    EventCode.JOB_LEASE_LOST: "lease_lost",
    EventCode.JOB_DONE: "done",
    EventCode.JOB_FAILED: "failed",
    EventCode.JOB_SKIPPED: "skipped",
    EventCode.JOB_CANCELLED: "cancelled",
    EventCode.JOB_RETRIED: "retried",
    EventCode.JOB_RERUN: "rerun",
    EventCode.JOB_RERUN_OF: "rerun_of",
    EventCode.JOB_PRIORITY_CHANGED: "priority_changed",
    EventCode.JOB_FINISHED_AFTER_CANCEL: "finished_after_cancel",
    EventCode.JOB_ERROR_AFTER_CANCEL: "error_after_cancel",
    EventCode.JOB_SKIPPED_AFTER_CANCEL: "skipped_after_cancel",
    EventCode.SERIES_RERUN: "series_rerun",
    EventCode.SERIES_RECEIVED: "received",
    EventCode.SERIES_COMPLETE: "complete",
    EventCode.COMPLETION_HELD: "completion_held",
    EventCode.COMPLETION_NOTE: "completion",
    EventCode.QUALITY_CHECKED: "quality_checked",
    EventCode.QUALITY_SKIPPED: "quality_skipped",
    EventCode.QUALITY_WARNING: "quality_warning",
    EventCode.QUALITY_IGNORED: "quality_ignored",
    EventCode.VOLUME_LOADED: "volume_loaded",
    EventCode.PRIOR_FOUND: "prior_found",
    EventCode.INFERENCE_DONE: "inference_done",
    EventCode.INFERENCE_REMOTE: "ran_remotely",
    EventCode.RESULTS_ENCODED: "encoded",
    EventCode.RESULTS_WRITTEN: "results_written",
    EventCode.RESULTS_SKIPPED: "results_skipped",
    EventCode.RESULTS_STALE_REMOVED: "stale_results_removed",
    EventCode.RESULTS_INCOMPLETE: "results_incomplete",
    EventCode.EXPORT_SENT: "sent",
    EventCode.EXPORT_NOT_SENT: "not_sent",
    EventCode.EXPORT_RETRY: "export_retry_scheduled",
    EventCode.EXPORT_RELEASED: "export_released",
    EventCode.EXPORT_FAILED: "failed",
}

#: Codes that count as a failed export attempt (``ainode_export_failures_total``).
EXPORT_FAILURE_CODES = (EventCode.EXPORT_RETRY, EventCode.EXPORT_FAILED)
