"""The node performs its own workitems: fetch the inputs, run the job, follow it.

A polling thread that, for each workitem the node may perform:

1. claims a due SCHEDULED workitem (IN PROGRESS, a Transaction UID only the node knows);
2. fetches the Input Information Sequence's series it does not hold: a pull from the
   configured source whose AE title or URL is the item's retrieve AE title / URL (an input
   no configured source serves cancels the workitem with that reason: the node fetches only
   from declared sources);
3. once the series is complete, queues one job for the task's routine (a rule: its plugin,
   destinations and priority; a plugin name: that plugin, no destination) and links it;
4. follows the job: progress from its events, COMPLETED with the Output Information
   Sequence when the job is ``done`` (every destination sent), CANCELED with the reason when
   it failed, was skipped or was cancelled. A cancellation request cancels the job (a
   running job's worker stops at its next deadline check and its outcome is discarded).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pydicom

from node.config import AnyDestination, AnySource, RuleSettings
from node.contract.kinds import file_tag
from node.polling import PollingThread
from node.state.events import EventCode
from node.state.jobs import JobActionError, JobQueue
from node.state.pulls import PullStore
from node.state.series import SeriesStore
from node.state.workitems import Workitem
from node.worklist import dataset as ds
from node.worklist.service import NODE, WorklistService
from node.worklist.states import UpsState

log = logging.getLogger(__name__)

#: The ``rule`` a pull for a workitem carries: dispatch leaves such series to the worklist.
PULL_RULE_PREFIX = "workitem:"
#: Progress (percent, description) after each job event, in the order they happen.
PROGRESS: dict[str, tuple[int, str]] = {
    EventCode.JOB_QUEUED: (10, "job queued"),
    EventCode.JOB_STARTED: (20, "job started"),
    EventCode.VOLUME_LOADED: (30, "volume loaded"),
    EventCode.INFERENCE_DONE: (60, "inference done"),
    EventCode.RESULTS_ENCODED: (70, "results encoded"),
    EventCode.RESULTS_WRITTEN: (75, "results written"),
    EventCode.EXPORT_SENT: (90, "results sent to a destination"),
}
JOB_PRIORITY = {"HIGH": 0, "LOW": 9}

#: ``submit(source, study_uid, series_uid, rule, origin) -> pull id``.
SubmitPull = Callable[[str, str, str | None, str, str], int]


def source_for(sources: Mapping[str, AnySource], reference: ds.InputReference) -> str | None:
    """The configured source that serves the retrieve AE title or URL of an input."""
    for name, source in sources.items():
        if reference.retrieve_ae and source.ae_title == reference.retrieve_ae:
            return name
        url = getattr(source, "url", None)
        if reference.retrieve_url and url:
            wanted = reference.retrieve_url.rstrip("/")
            if wanted == url.rstrip("/") or wanted.startswith(url.rstrip("/") + "/"):
                return name
    return None


class WorklistPerformer(PollingThread):
    """Drives the workitems this node performs (see the module docstring)."""

    idle_seconds = 0.5

    def __init__(
        self,
        worklist: WorklistService,
        queue: JobQueue,
        series: SeriesStore,
        pulls: PullStore,
        *,
        submit_pull: SubmitPull,
        sources: Callable[[], Mapping[str, AnySource]],
        rules: Callable[[], Sequence[RuleSettings]],
        destinations: Callable[[], Mapping[str, AnyDestination]],
        clock: Callable[[], float],
        on_enqueued: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__("worklist")
        self._worklist = worklist
        self._queue = queue
        self._series = series
        self._pulls = pulls
        self._submit_pull = submit_pull
        self._sources = sources
        self._rules = rules
        self._destinations = destinations
        self._clock = clock
        self._on_enqueued = on_enqueued

    def run_once(self) -> bool:
        busy = False
        now = self._clock()
        store = self._worklist.store
        for item in store.all(state=UpsState.SCHEDULED.value):
            if item.performer or (item.scheduled_at is not None and item.scheduled_at > now):
                continue
            claimed = self._worklist.claim_for_node(item.uid)
            if claimed is not None:
                busy = True
                self._start(claimed)
        for item in store.all(state=UpsState.IN_PROGRESS.value):
            if item.performer == NODE:
                busy = self._follow(item) or busy
        return busy

    # -- inputs -----------------------------------------------------------------------
    def _start(self, item: Workitem) -> None:
        """Fetch what is missing (one pull per input series), or queue the job now."""
        sources = self._sources()
        pull_id: int | None = None
        for reference in ds.input_references(item.dataset):
            if self._held(reference):
                continue
            source = source_for(sources, reference)
            if source is None:
                where = reference.retrieve_url or reference.retrieve_ae or "no retrieve AE/URL"
                self._worklist.cancel_for_node(
                    item.uid,
                    f"input series {reference.series_uid} cannot be retrieved: no configured"
                    f" source serves {where}",
                )
                return
            pull_id = self._submit_pull(
                source,
                reference.study_uid,
                reference.series_uid,
                f"{PULL_RULE_PREFIX}{item.uid}",
                f"workitem:{item.uid}",
            )
        if pull_id is not None:
            self._worklist.link(item.uid, pull_id=pull_id)
            self._worklist.report_progress(item.uid, 5, "fetching the inputs")
        else:
            self._enqueue(item)

    def _held(self, reference: ds.InputReference) -> bool:
        if reference.series_uid is None:
            return False
        row = self._series.series(reference.series_uid)
        if row is None or row.state != "complete":
            return False
        if reference.sop_uids:
            held = {path.stem for path in self._series.instance_paths(reference.series_uid)}
            return set(reference.sop_uids) <= held
        return True

    def _routine(self, item: Workitem) -> tuple[str, str, list[str], int, bool]:
        """``(rule, plugin, destinations, priority, shadow)`` for the workitem's routine."""
        for rule in self._rules():
            if rule.name == item.routine:
                priority = JOB_PRIORITY.get(item.priority, rule.priority)
                return rule.name, rule.plugin, list(rule.send_to), priority, rule.shadow
        return (
            f"{PULL_RULE_PREFIX}{item.routine}",
            item.routine,
            [],
            JOB_PRIORITY.get(item.priority, 5),
            False,
        )

    def _enqueue(self, item: Workitem) -> None:
        references = ds.input_references(item.dataset)
        series_uid = references[0].series_uid if references else None
        row = self._series.series(series_uid) if series_uid else None
        if row is None:
            self._worklist.cancel_for_node(item.uid, "the input series is not held")
            return
        rule, plugin, destinations, priority, shadow = self._routine(item)
        job_ids: list[int] = []

        def decide(current: Workitem) -> Workitem | None:
            if current.job_id is not None or current.state != UpsState.IN_PROGRESS:
                return None
            job_ids.append(
                self._queue.enqueue(
                    series_uid=row.series_uid,
                    study_uid=row.study_uid,
                    generation=row.generation,
                    rule=rule,
                    plugin=plugin,
                    destinations=destinations,
                    priority=priority,
                    now=self._clock(),
                    shadow=shadow,
                )
            )
            return replace(current, job_id=job_ids[0])

        # The job and its link commit together: a restart never queues a second job.
        self._worklist.store.change(item.uid, decide, self._clock())
        if job_ids:
            log.info("workitem job queued uid=%s job_id=%d", item.uid, job_ids[0])
            self._worklist.link(item.uid, job_id=job_ids[0])
            self._worklist.report_progress(item.uid, *PROGRESS[EventCode.JOB_QUEUED])
            self._on_enqueued()

    # -- following ----------------------------------------------------------------------
    def _follow(self, item: Workitem) -> bool:
        if item.job_id is None:
            if item.cancel_requested:
                self._worklist.cancel_for_node(item.uid, "cancellation requested")
                return True
            if item.pull_id is None:
                self._start(item)  # claimed but not started (the node stopped in between)
                return True
            pull = self._pulls.get(item.pull_id)
            if pull is None or pull.state == "failed":
                error = pull.error if pull is not None else "the pull is gone"
                self._worklist.cancel_for_node(
                    item.uid, f"the inputs could not be retrieved: {error}"
                )
                return True
            if pull.state == "done" and all(
                self._held(reference) for reference in ds.input_references(item.dataset)
            ):
                self._enqueue(item)
                return True
            if pull.state == "done" and any(e.get("failed") for e in pull.detail.get("series", [])):
                self._worklist.cancel_for_node(
                    item.uid, f"the inputs could not be retrieved: {pull.error}"
                )
                return True
            return False
        job = self._queue.get(item.job_id)
        if job is None:
            self._worklist.cancel_for_node(item.uid, f"job {item.job_id} is gone")
            return True
        if item.cancel_requested and job.state in ("queued", "running", "exporting"):
            with contextlib.suppress(JobActionError):  # finished meanwhile: its outcome decides
                self._queue.cancel(job.id, self._clock(), by=f"workitem {item.uid}")
            return True
        if job.state == "done":
            self._worklist.complete_for_node(
                item.uid,
                started_at=job.started_at or item.created_at,
                outputs=self._outputs(job.result_dir, job.destinations, job.shadow),
            )
            return True
        if job.state in ("failed", "skipped", "cancelled"):
            reason = job.error or f"job {job.id} {job.state}"
            if job.state == "cancelled" and item.cancel_requested:
                reason = "cancellation requested"
            self._worklist.cancel_for_node(item.uid, f"job {job.id} {job.state}: {reason}")
            return True
        percent, description = 10, "job queued"
        for event in self._queue.events(job.id):
            step = PROGRESS.get(event.code)
            if step is not None and step[0] > percent:
                percent, description = step
        if job.state == "exporting" and percent < 80:
            percent, description = 80, "sending results"
        self._worklist.report_progress(item.uid, percent, description)
        return False

    def _outputs(
        self, result_dir: Path | None, destinations: Sequence[str], shadow: bool
    ) -> list[ds.OutputReference]:
        """One reference per result file and destination it went to."""
        if result_dir is None or not result_dir.is_dir():
            return []
        configured = self._destinations()
        found: list[ds.OutputReference] = []
        for path in sorted(result_dir.glob("*.dcm")):
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception as exc:
                log.warning("result file unreadable path=%s error=%s", path, exc)
                continue
            base = ds.OutputReference(
                study_uid=str(header.StudyInstanceUID),
                series_uid=str(header.SeriesInstanceUID),
                sop_class_uid=str(header.SOPClassUID),
                sop_uid=str(header.SOPInstanceUID),
            )
            tag = file_tag(path.name)
            sent = False
            for name in [] if shadow else destinations:
                destination = configured.get(name)
                if destination is None:
                    continue
                if tag is not None and tag not in destination.result_tags:
                    continue
                url = getattr(destination, "url", None)
                found.append(
                    replace(
                        base,
                        retrieve_ae=None if url else getattr(destination, "ae_title", None),
                        retrieve_url=f"{url.rstrip('/')}/studies/{base.study_uid}/series/"
                        f"{base.series_uid}"
                        if url
                        else None,
                    )
                )
                sent = True
            if not sent:
                found.append(base)
        return found
