"""A job's input and output as plain data: what travels to an executor and back.

A job runs in three steps: :func:`~node.orchestration.prepare.prepare` reads the state
database into a :class:`JobInput`; :func:`~node.orchestration.execute.execute` turns it
into a :class:`JobOutput` touching nothing but files (an
:class:`~node.orchestration.executor.Executor` may run it in another thread or
process); :func:`~node.orchestration.record.record` writes the outcome and the events.
Both values hold only strings, numbers, paths and the
:class:`~node.results.plan.ResultPlan`: they pickle, and hold no open file, database
handle or dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from node.config import QualitySettings
from node.results.plan import ResultPlan
from node.state.events import EventCode

#: How a job ended.
DONE = "done"
SKIPPED = "skipped"
FAILED = "failed"


@dataclass(frozen=True)
class PriorInput:
    """The prior series found for a routine that needs one (or why there is none)."""

    paths: tuple[Path, ...] = ()
    #: One line for the ``prior_found`` event (no patient data).
    description: str = ""
    #: Seconds spent looking it up.
    seconds: float = 0.0
    #: Why there is none (``NoPrior``'s text); the job fails with it after the checks.
    error: str | None = None


@dataclass(frozen=True)
class JobInput:
    """Everything :func:`~node.orchestration.execute.execute` needs, found beforehand.

    Attributes
    ----------
    timeout_seconds
        The job's time limit, counted from the start of ``execute`` (a monotonic
        deadline means nothing in another process); None: no limit.
    instance_paths
        The spooled instances of the series, as the series table lists them.
    quality
        The input-quality policy of the job's rule (used when the routine declares
        ``validated_on``).
    previous_result_dir
        The results of an earlier run of the same series and rule (their SRs become
        the predecessors of the new ones), or None.
    revision
        The revision the results carry (1 + earlier generations that gave results).
    read_ahead
        ``(job id, instance paths)`` of the next queued job, for an executor that reads
        the next series while this one runs.
    priority
        The job's priority (0 is most urgent), for an executor that queues jobs.
    """

    job_id: int
    rule: str
    plugin: str
    plugin_version: str
    device: str
    template: str
    templates_dir: Path | None
    study_uid: str
    series_uid: str
    instance_paths: tuple[Path, ...]
    #: The result kinds to build; None: build and write nothing (``ainode evaluate``).
    plan: ResultPlan | None = None
    result_dir: Path | None = None
    shadow: bool = False
    timeout_seconds: float | None = None
    #: The lease owner running this attempt (names its temporary result directory).
    attempt: str = ""
    quality: QualitySettings = field(default_factory=QualitySettings)
    prior: PriorInput | None = None
    previous_result_dir: Path | None = None
    revision: int = 1
    read_ahead: tuple[int, tuple[Path, ...]] | None = None
    #: The job's priority (0 is most urgent): an executor that holds several jobs
    #: submits the most urgent first.
    priority: int = 0


@dataclass(frozen=True)
class ResultFile:
    """One written result object: its file, its tag and the destinations that take it."""

    path: Path
    tag: str
    destinations: tuple[str, ...]


@dataclass(frozen=True)
class JobOutput:
    """What ``execute`` did.

    Attributes
    ----------
    outcome
        ``done``, ``skipped`` (the gate or the routine's ``Accepts`` refused the input)
        or ``failed``.
    message
        Why it was skipped or failed (the exception's text).
    error_type
        The exception's class name (``failed``), e.g. ``JobTimeout``.
    input_rejected
        The exception said the input was refused (:class:`~node.errors.InputRejected`).
    source, checks
        For ``skipped``: ``quality`` or ``accepts``, and each failed check.
    events
        ``(event, detail, seconds after execute started)`` for the job's timeline, in order.
    elapsed
        Seconds ``execute`` took (with the events' offsets, :func:`record` dates them).
    seconds
        Seconds per stage: ``load``, ``infer``, ``encode`` (those reached).
    quality
        The gate's measurements and decision (:func:`~node.orchestration.summary.quality_json`).
    summary
        The prediction document written as ``summary.json``.
    """

    job_id: int
    outcome: str
    message: str | None = None
    error_type: str | None = None
    input_rejected: bool = False
    source: str | None = None
    checks: tuple[dict[str, str], ...] = ()
    events: tuple[tuple[EventCode, str, float], ...] = ()
    elapsed: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)
    quality: dict[str, Any] | None = None
    result_dir: Path | None = None
    files: tuple[ResultFile, ...] = ()
    summary: dict[str, Any] | None = None

    @property
    def code(self) -> str:
        """The outcome as a structured code: ``done``, ``skipped.<source>``,
        ``failed.<exception type>`` (for metrics; never parse :attr:`reason`)."""
        if self.outcome == SKIPPED:
            return f"{SKIPPED}.{self.source}"
        if self.outcome == FAILED:
            return f"{FAILED}.{self.error_type}"
        return self.outcome

    @property
    def reason(self) -> str | None:
        """The job's error as it shows it: ``"Type: message"`` when failed."""
        if self.outcome == FAILED:
            return f"{self.error_type}: {self.message}"
        return self.message

    def failed(self, exc: BaseException) -> JobOutput:
        """This output turned into a failure by ``exc`` (events kept)."""
        return replace(
            self,
            outcome=FAILED,
            message=str(exc),
            error_type=type(exc).__name__,
            input_rejected=False,
            source=None,
            checks=(),
        )
