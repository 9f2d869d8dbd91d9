"""The node as a task performer for another worklist (UPS-RS client, PS3.4 Annex CC).

:class:`WorklistPerformer` polls each source with a ``worklist`` section for SCHEDULED
workitems with its Procedure Step Label whose task (``scheme^code`` of the Scheduled
Workitem Code Sequence, or the Scheduled Station Name) maps to an active rule in
``worklist.tasks``; nothing else is claimed. It claims one with a fresh Transaction UID
(IN PROGRESS; a 409 means another performer took it first), fetches the inputs through
the pull service (WADO-RS / C-GET / C-MOVE from the source the input's retrieve URL or AE
title names), lets the rule's job run, reports progress, and completes the workitem with
the Output Information Sequence (the result objects and where they were sent) once the
job is done, or cancels it with the reason.

The claim is recorded (:class:`~node.state.performed.PerformedStore`) before it is sent,
with its Transaction UID, the pull and the job: a restarted node carries on with the same
Transaction UID (the pull and the job are durable and resume by themselves), so the task
completes once.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from node.config import (
    AnySource,
    DestinationSettings,
    DicomWebDestinationSettings,
    DicomWebSourceSettings,
    RuleSettings,
)
from node.config.destinations import DestinationBase
from node.dicomweb.ups_client import UpsClient, WorkitemConflict, WorklistError, to_json
from node.orchestration.dispatch import queue_rule_job
from node.polling import PollingThread
from node.pull.service import PullService
from node.state.jobs import Job, JobQueue
from node.state.performed import Performed, PerformedStore
from node.state.pulls import PullStore
from node.state.series import SeriesStore
from node.worklist import dataset as ds

log = logging.getLogger(__name__)

SCHEDULED, IN_PROGRESS, COMPLETED, CANCELED = "SCHEDULED", "IN PROGRESS", "COMPLETED", "CANCELED"

#: Progress reported to the worklist per step (percent).
PROGRESS = {"fetching": 10, "queued": 30, "running": 50, "exporting": 80}


def task_keys(workitem: Dataset) -> list[str]:
    """The keys ``tasks`` may map this workitem's task by, looked up as the worklist's own
    ``worklist.tasks`` are (:func:`node.worklist.dataset.task_keys`)."""
    return ds.task_keys(workitem.to_json_dict())


@dataclass(frozen=True)
class InputRef:
    """One input series of a workitem and where it can be retrieved from."""

    study_uid: str
    series_uid: str
    retrieve_url: str = ""
    retrieve_ae: str = ""


def inputs_of(workitem: Dataset) -> list[InputRef]:
    """The Input Information Sequence's series (one entry per series)."""
    found: dict[str, InputRef] = {}
    for item in workitem.get("InputInformationSequence", []):
        series_uid = str(item.get("SeriesInstanceUID", ""))
        study_uid = str(item.get("StudyInstanceUID", ""))
        if not series_uid or not study_uid:
            continue
        url = str(item.get("RetrieveURL", "") or "")
        for retrieval in item.get("WADORSRetrievalSequence", []):
            url = url or str(retrieval.get("RetrieveURL", "") or "")
        ae = ""
        for retrieval in item.get("DICOMRetrievalSequence", []):
            ae = ae or str(retrieval.get("RetrieveAETitle", "") or "")
        found.setdefault(series_uid, InputRef(study_uid, series_uid, url, ae))
    return list(found.values())


def input_source(
    ref: InputRef, sources: Mapping[str, AnySource], fallback: str | None, worklist: str
) -> str | None:
    """The configured source to fetch ``ref`` from: the DICOMweb source whose URL the
    retrieve URL starts with, or the DIMSE source with the retrieve AE title; else
    ``fallback`` (``worklist.inputs_source``); an input naming no location comes from
    ``worklist`` (the worklist's own server). None: nothing configured serves it (the
    node fetches only from declared sources)."""
    if ref.retrieve_url:
        for name, source in sources.items():
            root = source.url.rstrip("/") if isinstance(source, DicomWebSourceSettings) else ""
            if root and (ref.retrieve_url == root or ref.retrieve_url.startswith(root + "/")):
                return name
    if ref.retrieve_ae:
        for name, source in sources.items():
            if source.ae_title == ref.retrieve_ae and not isinstance(
                source, DicomWebSourceSettings
            ):
                return name
    if fallback is not None:
        return fallback
    return None if ref.retrieve_url or ref.retrieve_ae else worklist


def _dicom_datetime(at: float) -> str:
    return datetime.datetime.fromtimestamp(at).strftime("%Y%m%d%H%M%S")


def output_information(
    result_dir: Path | None, destinations: Mapping[str, DestinationBase], sent_to: Sequence[str]
) -> list[Dataset]:
    """Output Information Sequence items: the job's result objects per series, each with
    where it was sent (Retrieve AE Title for C-STORE, a WADO-RS URL for STOW-RS)."""
    if result_dir is None or not result_dir.is_dir():
        return []
    series: dict[tuple[str, str], list[Dataset]] = {}
    for path in sorted(result_dir.glob("*.dcm")):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        reference = Dataset()
        reference.ReferencedSOPClassUID = header.SOPClassUID
        reference.ReferencedSOPInstanceUID = header.SOPInstanceUID
        key = (str(header.StudyInstanceUID), str(header.SeriesInstanceUID))
        series.setdefault(key, []).append(reference)
    items = []
    for (study_uid, series_uid), references in series.items():
        item = Dataset()
        item.TypeOfInstances = "DICOM"
        item.StudyInstanceUID = study_uid
        item.SeriesInstanceUID = series_uid
        item.ReferencedSOPSequence = DicomSequence(references)
        aes, urls = [], []
        for name in sent_to:
            destination = destinations.get(name)
            if isinstance(destination, DestinationSettings):
                aes.append(destination.ae_title)
            elif isinstance(destination, DicomWebDestinationSettings):
                root = destination.url.rstrip("/")
                urls.append(f"{root}/studies/{study_uid}/series/{series_uid}")
        if aes:
            retrieval = Dataset()
            retrieval.RetrieveAETitle = aes[0] if len(aes) == 1 else aes
            item.DICOMRetrievalSequence = DicomSequence([retrieval])
        if urls:
            wado = Dataset()
            wado.RetrieveURL = urls[0]
            item.WADORSRetrievalSequence = DicomSequence([wado])
        items.append(item)
    return items


class RemoteWorklistPerformer(PollingThread):
    """Claims, runs and completes other worklists' workitems, one at a time."""

    idle_seconds = 0.5

    def __init__(
        self,
        store: PerformedStore,
        sources: Callable[[], Mapping[str, AnySource]],
        puller: PullService,
        pulls: PullStore,
        queue: JobQueue,
        series: SeriesStore,
        rules: Callable[[], Sequence[RuleSettings]],
        destinations: Callable[[], Mapping[str, DestinationBase]],
        *,
        default_tasks: Callable[[], Mapping[str, str]] = dict,
        node_ae_title: str,
        clock: Callable[[], float],
        on_enqueued: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__("worklist-performer")
        self._store = store
        self._sources = sources
        self._puller = puller
        self._pulls = pulls
        self._queue = queue
        self._series = series
        self._rules = rules
        self._destinations = destinations
        self._default_tasks = default_tasks
        self._node_ae_title = node_ae_title
        self._clock = clock
        self._on_enqueued = on_enqueued
        self._next_poll: dict[str, float] = {}
        #: Workitems left to other performers (logged once).
        self._passed: set[str] = set()

    # -- configuration ---------------------------------------------------------------
    def _worklists(self) -> Iterator[tuple[str, DicomWebSourceSettings]]:
        for name, source in self._sources().items():
            if isinstance(source, DicomWebSourceSettings) and source.worklist is not None:
                yield name, source

    def next_wait(self) -> float:
        polls = [s.worklist.poll_seconds for _, s in self._worklists() if s.worklist]
        return min([self.idle_seconds, *polls]) if self._store.active() else min(polls or [5.0])

    def _rule_for(self, source: DicomWebSourceSettings, workitem: Dataset) -> RuleSettings | None:
        """The active rule that performs this workitem's task, or None (not claimed)."""
        assert source.worklist is not None
        active = {rule.name: rule for rule in self._rules()}
        tasks = source.worklist.tasks or self._default_tasks()
        for key in task_keys(workitem):
            name = tasks.get(key)
            if name is not None and name in active:
                return active[name]
        return None

    # -- the loop --------------------------------------------------------------------
    def run_once(self) -> bool:
        busy = False
        for claim in self._store.active():
            try:
                busy |= self._advance(claim)
            except WorklistError as exc:
                if exc.status is None or exc.status >= 500:  # away: again on the next round
                    log.warning(
                        "worklist request failed workitem_uid=%s source=%s error=%s",
                        claim.workitem_uid,
                        claim.source,
                        exc,
                    )
                    continue
                self._give_up(claim, exc)  # refused: asking again would not help
                busy = True
        if self._store.active():
            return busy
        now = time.monotonic()
        for name, source in self._worklists():
            if self._next_poll.get(name, 0.0) > now:
                continue
            assert source.worklist is not None
            self._next_poll[name] = now + source.worklist.poll_seconds
            try:
                if self._claim_one(name, source):
                    return True
            except WorklistError as exc:
                log.warning("worklist search failed source=%s error=%s", name, exc)
        return busy

    def _claim_one(self, name: str, source: DicomWebSourceSettings) -> bool:
        assert source.worklist is not None
        filters = {"ProcedureStepState": SCHEDULED}
        if source.worklist.label:
            filters["ProcedureStepLabel"] = source.worklist.label
        with UpsClient(source) as client:
            for workitem in client.search(filters):
                uid = str(workitem.get("SOPInstanceUID", ""))
                if not uid or workitem.get("ProcedureStepState", SCHEDULED) != SCHEDULED:
                    continue
                rule = self._rule_for(source, workitem)
                if rule is None:
                    log.debug("workitem not claimed: no task mapping workitem_uid=%s", uid)
                    continue
                problem = self._unservable(name, source, workitem)
                if problem:
                    if uid not in self._passed:  # once, not at every search
                        self._passed.add(uid)
                        log.info("workitem not claimed workitem_uid=%s reason=%s", uid, problem)
                    continue
                transaction = generate_uid()
                claim = self._store.add(
                    source=name,
                    workitem_uid=uid,
                    transaction_uid=transaction,
                    rule=rule.name,
                    workitem=to_json(workitem),
                    now=self._clock(),
                )
                try:
                    client.change_state(uid, IN_PROGRESS, transaction)
                except WorkitemConflict as exc:
                    self._store.update(claim.id, self._clock(), state="lost", reason=str(exc))
                    log.info("workitem taken by another performer workitem_uid=%s", uid)
                    continue
                except WorklistError as exc:
                    # Unknown whether it took: the claim row stays 'claiming' and is
                    # settled with its Transaction UID on the next round.
                    log.warning("claim unanswered workitem_uid=%s error=%s", uid, exc)
                    return True
                self._store.update(claim.id, self._clock(), state="fetching")
                log.info(
                    "workitem claimed workitem_uid=%s source=%s rule=%s transaction_uid=%s",
                    uid,
                    name,
                    rule.name,
                    transaction,
                )
                return True
        return False

    def _unservable(
        self, name: str, source: DicomWebSourceSettings, workitem: Dataset
    ) -> str | None:
        """Why the node cannot fetch the workitem's inputs (then it leaves the workitem to
        performers that can), or None."""
        assert source.worklist is not None
        refs = inputs_of(workitem)
        if not refs:
            return "no input series"
        sources = self._sources()
        names = set()
        for ref in refs:
            found = input_source(ref, sources, source.worklist.inputs_source, name)
            if found is None:
                return f"no configured source serves {ref.retrieve_url or ref.retrieve_ae}"
            names.add(found)
        if len(names) > 1:
            return "inputs from several sources"
        return None

    def _advance(self, claim: Performed) -> bool:
        source = self._sources().get(claim.source)
        if not isinstance(source, DicomWebSourceSettings) or source.worklist is None:
            return False  # the source left the configuration: nothing to talk to
        with UpsClient(source) as client:
            if claim.state == "claiming":
                return self._settle_claim(client, claim)
            if self._clock() - claim.created_at > source.worklist.timeout_seconds:
                self._cancel(client, claim, "the task took longer than the performer allows")
                return True
            if claim.state == "fetching":
                return self._fetch(client, claim, source.worklist.inputs_source)
            return self._follow_job(client, claim)

    def _settle_claim(self, client: UpsClient, claim: Performed) -> bool:
        """A claim whose answer was lost (or a node killed before it came): an update with
        its Transaction UID tells whether the workitem is ours."""
        try:
            self._report(client, claim, 0, "claimed")
        except WorkitemConflict as exc:
            self._store.update(claim.id, self._clock(), state="lost", reason=str(exc))
            return True
        except WorklistError as exc:
            if exc.status is None:
                raise
            self._store.update(claim.id, self._clock(), state="lost", reason=str(exc))
            return True
        self._store.update(claim.id, self._clock(), state="fetching")
        log.info("workitem claim resumed workitem_uid=%s", claim.workitem_uid)
        return True

    def _fetch(self, client: UpsClient, claim: Performed, fallback: str | None) -> bool:
        workitem = Dataset.from_json(claim.workitem)
        refs = inputs_of(workitem)
        if claim.pull_id is None:
            sources = self._sources()
            names = {input_source(ref, sources, fallback, claim.source) for ref in refs}
            if len(names) != 1 or None in names:  # checked before the claim; config changed
                self._cancel(client, claim, "inputs cannot be retrieved: no single source")
                return True
            studies = {ref.study_uid for ref in refs}
            pull = self._puller.submit(
                source=str(names.pop()),
                study_uid=refs[0].study_uid,
                series_uid=refs[0].series_uid if len(refs) == 1 else None,
                rule=claim.rule,
                origin=f"workitem {claim.workitem_uid}",
            )
            if len(studies) > 1:
                log.warning("workitem inputs span studies; the first is fetched")
            self._store.update(claim.id, self._clock(), pull_id=pull.id)
            self._report(client, claim, PROGRESS["fetching"], "fetching inputs")
            return True
        fetched = self._pulls.get(claim.pull_id)
        if fetched is None or fetched.state == "failed":
            reason = fetched.error if fetched is not None else "the pull is gone"
            self._cancel(client, claim, f"inputs cannot be retrieved: {reason}")
            return True
        if fetched.state != "done":
            return False
        job = self._job_for(claim, refs)
        if job is None:
            return False
        self._store.update(claim.id, self._clock(), state="running", job_id=job.id)
        return True

    def _job_for(self, claim: Performed, refs: Sequence[InputRef]) -> Job | None:
        """The rule's job on an input series queued after the claim; once the inputs are
        complete and dispatched without one (the node held them already, or the rule's
        conditions did not match), a job for the rule is queued: the workitem asked for it."""
        waiting = False
        for ref in refs:
            for job in self._queue.jobs(series_uid=ref.series_uid):
                if job.rule == claim.rule and job.id > claim.after_job_id:
                    return job
            row = self._series.series(ref.series_uid)
            if row is None:
                continue
            if row.state != "complete" or row.dispatched_generation < row.generation:
                waiting = True
        if waiting:
            return None
        rule = next((r for r in self._rules() if r.name == claim.rule), None)
        held = [row for ref in refs if (row := self._series.series(ref.series_uid)) is not None]
        if rule is None or not held:
            return None
        job_id = queue_rule_job(self._queue, held[0], rule, self._clock())
        log.info("job queued for workitem workitem_uid=%s job_id=%d", claim.workitem_uid, job_id)
        self._on_enqueued()
        return self._queue.get(job_id)

    def _follow_job(self, client: UpsClient, claim: Performed) -> bool:
        job = self._queue.get(claim.job_id or 0)
        if job is None:
            self._cancel(client, claim, "the job is gone")
            return True
        if job.state == "done":
            self._complete(client, claim, job)
            return True
        if job.state in ("failed", "skipped", "cancelled"):
            self._cancel(client, claim, f"job {job.id} {job.state}: {job.error or '-'}")
            return True
        percent = PROGRESS.get(job.state, 50)
        if percent != claim.progress:
            self._report(client, claim, percent, f"job {job.id} {job.state}")
            return True
        return False

    # -- requests to the worklist ----------------------------------------------------
    def _report(self, client: UpsClient, claim: Performed, percent: int, text: str) -> None:
        progress = Dataset()
        progress.ProcedureStepProgress = percent
        progress.ProcedureStepProgressDescription = text[:64]
        changes = Dataset()
        changes.ProcedureStepProgressInformationSequence = DicomSequence([progress])
        client.update(claim.workitem_uid, claim.transaction_uid, changes)
        self._store.update(claim.id, self._clock(), progress=percent)

    def _complete(self, client: UpsClient, claim: Performed, job: Job) -> None:
        workitem = Dataset.from_json(claim.workitem)
        performed = Dataset()
        performed.PerformedProcedureStepStartDateTime = _dicom_datetime(claim.created_at)
        performed.PerformedProcedureStepEndDateTime = _dicom_datetime(self._clock())
        station = Dataset()
        station.CodeValue = self._node_ae_title
        station.CodingSchemeDesignator = "99AINODE"
        station.CodeMeaning = f"ainode {self._node_ae_title}"
        performed.PerformedStationNameCodeSequence = DicomSequence([station])
        performed.PerformedWorkitemCodeSequence = DicomSequence(
            list(workitem.get("ScheduledWorkitemCodeSequence", []))
        )
        sent_to = [] if job.shadow else list(job.destinations)
        performed.OutputInformationSequence = DicomSequence(
            output_information(job.result_dir, self._destinations(), sent_to)
        )
        progress = Dataset()
        progress.ProcedureStepProgress = 100
        progress.ProcedureStepProgressDescription = f"job {job.id} done"
        changes = Dataset()
        changes.ProcedureStepProgressInformationSequence = DicomSequence([progress])
        changes.UnifiedProcedureStepPerformedProcedureSequence = DicomSequence([performed])
        try:
            client.update(claim.workitem_uid, claim.transaction_uid, changes)
            client.change_state(claim.workitem_uid, COMPLETED, claim.transaction_uid)
        except WorkitemConflict as exc:
            self._lost(claim, exc)
            return
        self._store.update(claim.id, self._clock(), state="completed", progress=100)
        log.info(
            "workitem completed workitem_uid=%s job_id=%d outputs=%d",
            claim.workitem_uid,
            job.id,
            len(performed.OutputInformationSequence),
        )

    def _cancel(self, client: UpsClient, claim: Performed, reason: str) -> None:
        progress = Dataset()
        progress.ProcedureStepCancellationDateTime = _dicom_datetime(self._clock())
        progress.ReasonForCancellation = reason[:1024]
        changes = Dataset()
        changes.ProcedureStepProgressInformationSequence = DicomSequence([progress])
        try:
            client.update(claim.workitem_uid, claim.transaction_uid, changes)
            client.change_state(claim.workitem_uid, CANCELED, claim.transaction_uid)
        except WorkitemConflict as exc:
            self._lost(claim, exc)
            return
        self._store.update(claim.id, self._clock(), state="canceled", reason=reason)
        log.info("workitem canceled workitem_uid=%s reason=%s", claim.workitem_uid, reason)

    def _give_up(self, claim: Performed, exc: WorklistError) -> None:
        """The worklist refused a request (4xx): cancel the workitem with that reason, or,
        when it refuses that too, stop owing it a state."""
        source = self._sources().get(claim.source)
        if isinstance(source, DicomWebSourceSettings):
            try:
                with UpsClient(source) as client:
                    self._cancel(client, claim, f"the worklist refused a request: {exc}")
                return
            except WorklistError as again:
                exc = again
        self._lost(claim, exc)

    def _lost(self, claim: Performed, exc: Exception) -> None:
        """The worklist no longer takes the claim's Transaction UID (canceled or completed
        by someone else): stop owing it a state."""
        self._store.update(claim.id, self._clock(), state="lost", reason=str(exc))
        log.warning("workitem claim lost workitem_uid=%s error=%s", claim.workitem_uid, exc)

    def claims(self, limit: int = 100) -> list[dict[str, Any]]:
        """Recent claims, newest first (for the API)."""
        return [claim.as_json() for claim in self._store.recent(limit)]
