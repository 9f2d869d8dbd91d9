"""The UPS operations (PS3.4 Annex CC), shared by UPS-RS and the DIMSE SCP.

Every method either does what it says, audits it and publishes its event reports, or
raises :class:`~node.worklist.states.UpsError` and changes nothing. Callers name the actor
(a user, a token name or a calling AE title) for the audit log.

=====================  ===========================  =============================
operation              UPS-RS (PS3.18 §11)          DIMSE (PS3.4 CC.2)
=====================  ===========================  =============================
:meth:`create`         POST workitems               N-CREATE (UPS Push)
:meth:`retrieve`       GET workitems/{uid}          N-GET (UPS Pull)
:meth:`update`         POST workitems/{uid}         N-SET (UPS Pull)
:meth:`change_state`   PUT workitems/{uid}/state    N-ACTION 1 (UPS Pull)
:meth:`request_cancel` POST …/cancelrequest         N-ACTION 2 (UPS Push)
:meth:`search`         GET workitems?…              C-FIND (UPS Pull/Watch)
:meth:`subscribe`      POST …/subscribers/{ae}      N-ACTION 3 (UPS Watch)
:meth:`unsubscribe`    DELETE …/subscribers/{ae}    N-ACTION 4 (UPS Watch)
:meth:`suspend`        POST …/{global}/…/suspend    N-ACTION 5 (UPS Watch)
=====================  ===========================  =============================

The node performs its own workitems through :meth:`claim_for_node`,
:meth:`report_progress`, :meth:`complete_for_node` and :meth:`cancel_for_node`
(:mod:`node.worklist.performer`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from pydicom.uid import generate_uid

from node.spool import is_valid_uid
from node.state.audit import AuditLog
from node.state.interfaces import WorkitemStoreInterface
from node.state.workitems import (
    FILTERED_GLOBAL,
    GLOBAL,
    DuplicateWorkitem,
    UnknownWorkitem,
    Workitem,
)
from node.worklist import dataset as ds
from node.worklist import states
from node.worklist.events import EventBus, EventType, UpsEvent
from node.worklist.states import UpsError, UpsState, UpsWarning

log = logging.getLogger(__name__)

#: What a workitem's state report carries besides the state.
INPUT_READINESS = "00404041"
#: Attributes whose change is a UPS Assigned event (PS3.4 CC.2.4.2).
ASSIGNMENT = ("00404025", "00404026", "00404027", "00404034")
#: ``performer`` of a workitem this node runs / one a client claimed.
NODE = "node"
EXTERNAL = "external"


class WorklistService:
    """The worklist: workitems, their state machine, subscriptions and events.

    Parameters
    ----------
    store, audit
        The state stores.
    bus
        Where event reports go (the WebSocket channel and the DIMSE sender listen).
    tasks
        ``worklist.tasks``: task key (``scheme^code``, code or station name) -> routine.
    known_routine
        Whether a routine (rule or plugin name) exists on this node.
    clock
        Seconds since the epoch.
    on_created
        Called after a workitem is created (wakes the performer).
    """

    def __init__(
        self,
        store: WorkitemStoreInterface,
        audit: AuditLog,
        bus: EventBus,
        *,
        tasks: Callable[[], Mapping[str, str]],
        known_routine: Callable[[str], bool],
        clock: Callable[[], float],
        on_created: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.audit = audit
        self.bus = bus
        self._tasks = tasks
        self._known_routine = known_routine
        self._clock = clock
        self._on_created = on_created

    # -- helpers ----------------------------------------------------------------------
    def _get(self, uid: str) -> Workitem:
        found = self.store.get(uid)
        if found is None:
            raise UpsError(states.NO_SUCH_UPS, f"no workitem {uid[:64]}")
        return found

    def _change(
        self, uid: str, decide: Callable[[Workitem], Workitem | None]
    ) -> tuple[Workitem, Workitem]:
        try:
            return self.store.change(uid, decide, self._clock())
        except UnknownWorkitem:
            raise UpsError(states.NO_SUCH_UPS, f"no workitem {uid[:64]}") from None

    def _audit(self, actor: str, action: str, before: Workitem | None, after: Workitem) -> None:
        def summary(item: Workitem | None) -> dict[str, Any] | None:
            if item is None:
                return None
            percent, description = ds.progress_of(item.dataset)
            return {
                "state": item.state,
                "task": item.task,
                "routine": item.routine,
                "job_id": item.job_id,
                "performer": item.performer,
                "cancel_requested": item.cancel_requested,
                "progress": percent,
                "progress_description": description,
            }

        self.audit.record(
            user=actor,
            action=f"workitem.{action}",
            target=f"workitem:{after.uid}",
            before=summary(before),
            after=summary(after),
            now=self._clock(),
        )

    def subscribers(self, uid: str) -> tuple[str, ...]:
        return tuple(s.ae_title for s in self.store.subscriptions(workitem_uid=uid))

    def _publish(
        self,
        item: Workitem,
        event_type: EventType,
        attributes: dict[str, Any],
        to: Iterable[str] | None = None,
    ) -> None:
        subscribers = tuple(to) if to is not None else self.subscribers(item.uid)
        if subscribers:
            self.bus.publish(
                UpsEvent(item.uid, event_type, attributes, subscribers, at=self._clock())
            )

    def _state_report(self, item: Workitem, to: Iterable[str] | None = None) -> None:
        attributes: dict[str, Any] = {
            ds.PROCEDURE_STEP_STATE: ds.element("CS", item.state),
            INPUT_READINESS: item.dataset.get(INPUT_READINESS) or ds.element("CS", "READY"),
        }
        if item.state == UpsState.CANCELED:
            progress = (ds.items(item.dataset, ds.PROGRESS_INFORMATION) or [{}])[0]
            for tag in (ds.REASON_FOR_CANCELLATION, ds.CANCELLATION_DATETIME):
                if tag in progress:
                    attributes[tag] = progress[tag]
        self._publish(item, EventType.STATE_REPORT, attributes, to)

    def _progress_report(self, item: Workitem) -> None:
        progress = item.dataset.get(ds.PROGRESS_INFORMATION)
        if progress:
            self._publish(item, EventType.PROGRESS_REPORT, {ds.PROGRESS_INFORMATION: progress})

    # -- operations -------------------------------------------------------------------
    def routine_for(self, dataset: Mapping[str, Any]) -> tuple[str, str]:
        """``(task key, routine)`` the workitem asks for; :class:`UpsError` when none."""
        keys = ds.task_keys(dataset)
        tasks = self._tasks()
        for key in keys:
            routine = tasks.get(key)
            if routine is not None:
                if not self._known_routine(routine):
                    raise UpsError(
                        states.UNABLE_TO_PROCESS,
                        f"task {key!r} maps to {routine!r}, which is no rule or routine here",
                    )
                return key, routine
        if not keys:
            raise UpsError(
                states.MISSING_ATTRIBUTE,
                "give the task as Scheduled Workitem Code Sequence (0040,4018) or Scheduled"
                " Station Name Code Sequence (0040,4025)",
            )
        known = ", ".join(sorted(tasks)) or "none configured"
        raise UpsError(
            states.UNABLE_TO_PROCESS,
            f"no task mapping for {', '.join(keys)} (worklist.tasks knows: {known})",
        )

    def create(self, body: Any, *, uid: str | None, actor: str) -> Workitem:
        """Create a SCHEDULED workitem from DICOM JSON; ``uid`` from the request or the
        dataset's SOP Instance UID, else a new one. Nothing is stored when it fails."""
        dataset = ds.check_json(body)
        ds.check_create(dataset)
        in_body = ds.value(dataset, ds.SOP_INSTANCE_UID)
        if uid and in_body and uid != in_body:
            raise UpsError(
                states.INVALID_ATTRIBUTE_VALUE,
                "the SOP Instance UID in the body differs from the one in the request",
            )
        uid = uid or (str(in_body) if in_body else None) or generate_uid()
        if not is_valid_uid(uid):
            raise UpsError(states.INVALID_ATTRIBUTE_VALUE, f"not a valid UID: {uid[:70]!r}")
        task, routine = self.routine_for(dataset)
        dataset[ds.SOP_CLASS_UID] = ds.element("UI", ds.UPS_PUSH_SOP_CLASS)
        dataset[ds.SOP_INSTANCE_UID] = ds.element("UI", uid)
        priority = str(ds.value(dataset, ds.PRIORITY) or "MEDIUM")
        dataset.setdefault(ds.PRIORITY, ds.element("CS", priority))
        start = ds.value(dataset, ds.START_DATETIME)
        try:
            item = self.store.add(
                uid=uid,
                dataset=dataset,
                task=task,
                routine=routine,
                priority=priority,
                scheduled_at=ds.parse_datetime(str(start)) if start else None,
                created_by=actor,
                now=self._clock(),
            )
        except DuplicateWorkitem:
            raise UpsError(states.DUPLICATE_SOP_INSTANCE, uid) from None
        log.info("workitem created uid=%s task=%s routine=%s by=%s", uid, task, routine, actor)
        self._audit(actor, "create", None, item)
        for subscription in self.store.global_subscriptions():
            if subscription.filter and not ds.matches(dataset, _keys(subscription.filter)):
                continue
            self.store.subscribe(
                subscription.ae_title,
                uid,
                deletion_lock=subscription.deletion_lock,
                filter=None,
                now=self._clock(),
            )
        self._state_report(item)
        self._on_created()
        return item

    def retrieve(self, uid: str) -> dict[str, Any]:
        """The workitem as DICOM JSON, without its Transaction UID."""
        return ds.public(self._get(uid).dataset)

    def update(self, uid: str, body: Any, *, transaction_uid: str | None, actor: str) -> Workitem:
        """Set attributes of a SCHEDULED (anyone) or IN PROGRESS (the holder) workitem."""
        changes = ds.check_json(body)
        forbidden = sorted(set(changes) & ds.NOT_UPDATABLE)
        if forbidden:
            raise UpsError(
                states.INVALID_ATTRIBUTE_VALUE,
                f"{', '.join(forbidden)} cannot be updated (change the state with PUT …/state)",
            )
        start = ds.value(changes, ds.START_DATETIME)
        if start is not None and ds.parse_datetime(str(start)) is None:
            raise UpsError(states.INVALID_ATTRIBUTE_VALUE, "the start DateTime is not a DT")
        if ds.PRIORITY in changes and ds.value(changes, ds.PRIORITY) not in ds.PRIORITIES:
            raise UpsError(states.INVALID_ATTRIBUTE_VALUE, "priority is HIGH, MEDIUM or LOW")

        def decide(item: Workitem) -> Workitem:
            states.update(item.state, stored_uid=item.transaction_uid, given_uid=transaction_uid)
            dataset = {**copy.deepcopy(item.dataset), **changes}
            task, routine = item.task, item.routine
            if item.state == UpsState.SCHEDULED and ds.task_keys(changes):
                task, routine = self.routine_for(dataset)  # a new task must map too
            start = ds.value(dataset, ds.START_DATETIME)
            scheduled_at = ds.parse_datetime(str(start)) if start else None
            return replace(
                item,
                dataset=dataset,
                task=task,
                routine=routine,
                scheduled_at=scheduled_at,
                priority=str(ds.value(dataset, ds.PRIORITY) or item.priority),
            )

        before, after = self._change(uid, decide)
        self._audit(actor, "update", before, after)
        if ds.PROGRESS_INFORMATION in changes:
            self._progress_report(after)
        if any(tag in changes for tag in ASSIGNMENT):
            self._publish(
                after,
                EventType.ASSIGNED,
                {tag: after.dataset[tag] for tag in ASSIGNMENT if tag in after.dataset},
            )
        return after

    def change_state(
        self, uid: str, body: Any, *, actor: str
    ) -> tuple[Workitem, UpsWarning | None]:
        """PUT …/state: claim (IN PROGRESS with a new Transaction UID), complete or cancel."""
        dataset = ds.check_json(body)
        target = ds.value(dataset, ds.PROCEDURE_STEP_STATE)
        given = ds.value(dataset, ds.TRANSACTION_UID)
        if not target:
            raise UpsError(states.MISSING_ATTRIBUTE, "Procedure Step State (0074,1000) is required")
        warning: list[UpsWarning] = []

        def decide(item: Workitem) -> Workitem | None:
            outcome = states.change_state(
                item.state,
                str(target),
                stored_uid=item.transaction_uid,
                given_uid=str(given) if given else None,
                final_requirements_met=target != UpsState.COMPLETED
                or ds.completion_ready(item.dataset),
            )
            if isinstance(outcome, UpsWarning):
                warning.append(outcome)
                return None
            if item.performer == NODE and outcome != UpsState.IN_PROGRESS:
                # Only the node holds its own Transaction UID; reaching here means a client
                # presented it, which the node never reveals.
                log.warning("client finished a node-performed workitem uid=%s", uid)
            updated = copy.deepcopy(item.dataset)
            updated[ds.PROCEDURE_STEP_STATE] = ds.element("CS", str(outcome))
            if outcome == UpsState.CANCELED:
                updated = ds.with_progress(
                    updated,
                    int(ds.progress_of(updated)[0] or 0),
                    ds.progress_of(updated)[1] or "canceled by the performer",
                    canceled_at=self._clock(),
                )
            if outcome == UpsState.IN_PROGRESS:
                return replace(
                    item,
                    state=str(outcome),
                    transaction_uid=str(given),
                    performer=EXTERNAL,
                    dataset=updated,
                )
            return replace(item, state=str(outcome), dataset=updated)

        before, after = self._change(uid, decide)
        if warning:
            return after, warning[0]
        self._audit(actor, "state", before, after)
        self._state_report(after)
        return after, None

    def request_cancel(
        self, uid: str, body: Any, *, actor: str
    ) -> tuple[Workitem, UpsWarning | None]:
        """Ask for cancellation: a SCHEDULED workitem is canceled at once; for an IN
        PROGRESS one the performer gets a Cancel Requested event (this node cancels its
        job, see the performer)."""
        dataset = ds.check_json(body) if body else {}
        reason = ds.value(dataset, ds.REASON_FOR_CANCELLATION)
        reason_text = str(reason) if reason else f"cancellation requested by {actor}"
        warning: list[UpsWarning] = []

        def decide(item: Workitem) -> Workitem | None:
            outcome = states.request_cancel(item.state)
            if isinstance(outcome, UpsWarning):
                warning.append(outcome)
                return None
            if outcome is None:
                return replace(item, cancel_requested=True)
            updated = copy.deepcopy(item.dataset)
            updated[ds.PROCEDURE_STEP_STATE] = ds.element("CS", UpsState.CANCELED.value)
            updated = ds.with_progress(
                updated,
                0,
                "canceled before it started",
                reason=reason_text,
                canceled_at=self._clock(),
            )
            return replace(
                item, state=UpsState.CANCELED.value, dataset=updated, cancel_requested=True
            )

        before, after = self._change(uid, decide)
        if warning:
            return after, warning[0]
        self._audit(actor, "cancelrequest", before, after)
        if after.state == UpsState.CANCELED:
            self._state_report(after)
        else:
            self._publish(
                after,
                EventType.CANCEL_REQUESTED,
                {ds.REASON_FOR_CANCELLATION: ds.element("LT", reason_text)},
            )
            self._on_created()  # wakes the performer, which cancels the job
        return after, None

    def search(self, query: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
        """QIDO-style matching over every workitem (``limit``/``offset`` honoured)."""
        keys, controls = ds.parse_query(query)
        try:
            offset = int(controls.get("offset", "0"))
            limit = int(controls.get("limit", "0"))
        except ValueError:
            raise UpsError(states.INVALID_ATTRIBUTE_VALUE, "limit/offset are integers") from None
        if offset < 0 or limit < 0:
            raise UpsError(states.INVALID_ATTRIBUTE_VALUE, "limit/offset cannot be negative")
        found = [
            ds.public(item.dataset)
            for item in self.store.all(limit=100_000)
            if ds.matches(item.dataset, keys)
        ]
        found = found[offset:]
        return found[:limit] if limit else found

    def subscribe(
        self,
        ae_title: str,
        uid: str,
        *,
        deletion_lock: bool,
        filter_query: Iterable[tuple[str, str]] = (),
        actor: str,
    ) -> None:
        """Subscribe ``ae_title`` to one workitem, to all (:data:`GLOBAL`) or to those a
        filter matches (:data:`FILTERED_GLOBAL`); sends the initial state reports."""
        _check_ae(ae_title)
        now = self._clock()
        keys: list[tuple[list[str], str]] = []
        filter_pairs = [(k, v) for k, v in filter_query if k != "deletionlock"]
        if uid == FILTERED_GLOBAL:
            keys, _ = ds.parse_query(filter_pairs)
            if not keys:
                raise UpsError(states.MISSING_ATTRIBUTE, "a filtered subscription needs a filter")
        if uid in (GLOBAL, FILTERED_GLOBAL):
            self.store.subscribe(
                ae_title,
                uid,
                deletion_lock=deletion_lock,
                filter=dict(filter_pairs) or None,
                now=now,
            )
            targets = [
                item
                for item in self.store.all(limit=100_000)
                if item.state not in states.FINAL_STATES and ds.matches(item.dataset, keys)
            ]
        else:
            targets = [self._get(uid)]
        for item in targets:
            self.store.subscribe(
                ae_title, item.uid, deletion_lock=deletion_lock, filter=None, now=now
            )
        self.audit.record(
            user=actor,
            action="workitem.subscribe",
            target=f"workitem:{uid}",
            before=None,
            after={"ae_title": ae_title, "deletion_lock": deletion_lock, "workitems": len(targets)},
            now=now,
        )
        for item in targets:
            self._state_report(item, to=[ae_title])

    def unsubscribe(self, ae_title: str, uid: str, *, actor: str) -> None:
        _check_ae(ae_title)
        if uid not in (GLOBAL, FILTERED_GLOBAL):
            self._get(uid)
        removed = self.store.unsubscribe(ae_title, uid)
        self.audit.record(
            user=actor,
            action="workitem.unsubscribe",
            target=f"workitem:{uid}",
            before={"ae_title": ae_title, "subscriptions": removed},
            after=None,
            now=self._clock(),
        )

    def suspend(self, ae_title: str, *, actor: str) -> None:
        """Suspend a global subscription: no new workitems, existing ones still report."""
        _check_ae(ae_title)
        removed = self.store.suspend_global(ae_title)
        self.audit.record(
            user=actor,
            action="workitem.suspend",
            target=f"workitem:{GLOBAL}",
            before={"ae_title": ae_title, "subscriptions": removed},
            after=None,
            now=self._clock(),
        )

    # -- the node as performer --------------------------------------------------------
    def claim_for_node(self, uid: str) -> Workitem | None:
        """SCHEDULED -> IN PROGRESS with a Transaction UID only this node knows; ``None``
        when the workitem is no longer SCHEDULED (a client claimed or canceled it)."""

        def decide(item: Workitem) -> Workitem | None:
            if item.state != UpsState.SCHEDULED:
                return None
            states.claim(item.state)
            updated = copy.deepcopy(item.dataset)
            updated[ds.PROCEDURE_STEP_STATE] = ds.element("CS", UpsState.IN_PROGRESS.value)
            updated = ds.with_progress(updated, 0, "claimed by the node")
            return replace(
                item,
                state=UpsState.IN_PROGRESS.value,
                transaction_uid=generate_uid(),
                performer=NODE,
                dataset=updated,
            )

        before, after = self._change(uid, decide)
        if after.state != UpsState.IN_PROGRESS or before.state == after.state:
            return None
        self._audit(NODE, "claim", before, after)
        self._state_report(after)
        self._progress_report(after)
        return after

    def link(self, uid: str, *, job_id: int | None = None, pull_id: int | None = None) -> None:
        """Record the job or pull that performs the workitem."""

        def decide(item: Workitem) -> Workitem:
            return replace(
                item,
                job_id=job_id if job_id is not None else item.job_id,
                pull_id=pull_id if pull_id is not None else item.pull_id,
            )

        before, after = self._change(uid, decide)
        if job_id is not None:
            self._audit(NODE, "job", before, after)

    def report_progress(self, uid: str, percent: int, description: str) -> None:
        """Set the progress of an IN PROGRESS workitem the node performs (no-op otherwise
        or when unchanged)."""

        def decide(item: Workitem) -> Workitem | None:
            if item.state != UpsState.IN_PROGRESS or item.performer != NODE:
                return None
            if ds.progress_of(item.dataset) == (float(percent), description):
                return None
            return replace(item, dataset=ds.with_progress(item.dataset, percent, description))

        before, after = self._change(uid, decide)
        if after.dataset != before.dataset:
            self._audit(NODE, "progress", before, after)
            self._progress_report(after)

    def complete_for_node(
        self, uid: str, *, started_at: float, outputs: Iterable[ds.OutputReference]
    ) -> Workitem:
        """IN PROGRESS -> COMPLETED with the Output Information Sequence, by the node's own
        Transaction UID (the state machine checks it like any client's)."""
        now = self._clock()

        def decide(item: Workitem) -> Workitem | None:
            dataset = ds.with_progress(item.dataset, 100, "results sent")
            dataset = ds.with_performed(
                dataset, started_at=started_at, ended_at=now, outputs=outputs
            )
            outcome = states.finish(
                item.state,
                UpsState.COMPLETED,
                stored_uid=item.transaction_uid,
                given_uid=item.transaction_uid if item.performer == NODE else None,
                final_requirements_met=ds.completion_ready(dataset),
            )
            if isinstance(outcome, UpsWarning):
                return None
            dataset[ds.PROCEDURE_STEP_STATE] = ds.element("CS", UpsState.COMPLETED.value)
            return replace(item, state=UpsState.COMPLETED.value, dataset=dataset)

        before, after = self._change(uid, decide)
        if before.state != after.state:
            self._audit(NODE, "complete", before, after)
            self._progress_report(after)
            self._state_report(after)
        return after

    def cancel_for_node(self, uid: str, reason: str) -> Workitem:
        """SCHEDULED or IN PROGRESS (held by the node) -> CANCELED with ``reason``."""
        now = self._clock()

        def decide(item: Workitem) -> Workitem | None:
            if item.state == UpsState.SCHEDULED:
                pass  # the node refuses to start it (e.g. its inputs cannot be fetched)
            else:
                outcome = states.finish(
                    item.state,
                    UpsState.CANCELED,
                    stored_uid=item.transaction_uid,
                    given_uid=item.transaction_uid if item.performer == NODE else None,
                )
                if isinstance(outcome, UpsWarning):
                    return None
            percent, _ = ds.progress_of(item.dataset)
            dataset = ds.with_progress(
                item.dataset, int(percent or 0), "canceled", reason=reason, canceled_at=now
            )
            dataset[ds.PROCEDURE_STEP_STATE] = ds.element("CS", UpsState.CANCELED.value)
            return replace(item, state=UpsState.CANCELED.value, dataset=dataset)

        before, after = self._change(uid, decide)
        if before.state != after.state:
            log.info("workitem canceled uid=%s reason=%s", uid, reason)
            self._audit(NODE, "cancel", before, after)
            self._state_report(after)
        return after


def _keys(filter: Mapping[str, str]) -> list[tuple[list[str], str]]:
    keys, _ = ds.parse_query(filter.items())
    return keys


def _check_ae(ae_title: str) -> None:
    if not ae_title or len(ae_title) > 16 or "\\" in ae_title or not ae_title.isprintable():
        raise UpsError(states.INVALID_ATTRIBUTE_VALUE, f"not an AE title: {ae_title[:20]!r}")
