"""The worklist over DIMSE: UPS Push, Pull, Watch and Event (PS3.4 Annex CC) on the node's SCP.

Each handler turns the DIMSE request into the same call the UPS-RS routes make on
:class:`~node.worklist.service.WorklistService`, so both interfaces share one state
machine, one store and one set of event reports; a refusal's
:class:`~node.worklist.states.UpsError` status is the DIMSE status returned, a
:class:`~node.worklist.states.UpsWarning` the warning status.

=============================  ===========================  ==================================
DIMSE (SOP class)              PS3.4                        service call
=============================  ===========================  ==================================
N-CREATE (Push)                CC.2.5 Create                ``create``
N-SET (Pull)                   CC.2.6 Set (Transaction UID) ``update``
N-GET (Push, Pull, Watch)      CC.2.7 Get                   ``retrieve``
N-ACTION 1 (Pull)              CC.2.1 Change State          ``change_state``
N-ACTION 2 (Push, Watch)       CC.2.2 Request Cancel        ``request_cancel``
N-ACTION 3 (Watch)             CC.2.3 Subscribe             ``subscribe`` (0xC308: AE unknown)
N-ACTION 4 (Watch)             CC.2.3 Unsubscribe           ``unsubscribe``
N-ACTION 5 (Watch)             CC.2.3 Suspend Global        ``suspend``
C-FIND (Pull, Watch)           CC.2.8 Query                 ``search``
N-EVENT-REPORT (Event)         CC.2.4 Report                :class:`EventReportSender`
=============================  ===========================  ==================================

Event reports go to subscribers whose AE title the node can address: a DIMSE destination
or a DIMSE source with that AE title (its host and port). A subscribe request for any other
AE title is refused with 0xC308 (Receiving AE-TITLE is Unknown to this SCP).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom import evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    UnifiedProcedureStepEvent,
    UnifiedProcedureStepPull,
    UnifiedProcedureStepPush,
    UnifiedProcedureStepQuery,
    UnifiedProcedureStepWatch,
)

from node.config import DestinationSettings, DicomTlsClientSettings, DimseSourceSettings
from node.dicom.network import associate, requestor
from node.state.workitems import FILTERED_GLOBAL, GLOBAL
from node.worklist.events import EventBus, UpsEvent
from node.worklist.service import WorklistService
from node.worklist.states import UNKNOWN_RECEIVING_AE, UpsError, UpsWarning

log = logging.getLogger(__name__)

#: The UPS SOP classes the SCP serves (UPS Event only as the sender of reports).
UPS_SOP_CLASSES = (
    UnifiedProcedureStepPush,
    UnifiedProcedureStepPull,
    UnifiedProcedureStepWatch,
    UnifiedProcedureStepEvent,
    UnifiedProcedureStepQuery,
)

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
NO_SUCH_ACTION = 0x0123
MATCHING_PENDING = 0xFF00
UNABLE_TO_PROCESS = 0xC000

CHANGE_STATE, REQUEST_CANCEL, SUBSCRIBE, UNSUBSCRIBE, SUSPEND_GLOBAL = 1, 2, 3, 4, 5
#: Attributes of a Subscribe request that are not matching keys of a filtered subscription.
_SUBSCRIBE_CONTROLS = {Tag(0x0074, 0x1234), Tag(0x0074, 0x1230)}


@dataclass(frozen=True)
class Peer:
    """Where a subscriber listens for N-EVENT-REPORTs."""

    ae_title: str
    host: str
    port: int
    tls: DicomTlsClientSettings | None = None


def known_peers(destinations: Mapping[str, Any], sources: Mapping[str, Any]) -> dict[str, Peer]:
    """The AE titles the node can address: its DIMSE destinations and sources."""
    peers: dict[str, Peer] = {}
    for entry in [*sources.values(), *destinations.values()]:
        if isinstance(entry, DestinationSettings | DimseSourceSettings):
            peers[entry.ae_title.strip()] = Peer(
                entry.ae_title.strip(), entry.host, entry.port, entry.tls
            )
    return peers


def _status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]
    return status


def _refused(error: UpsError, operation: str, uid: str) -> Dataset:
    log.warning(
        "UPS %s refused status=0x%04X workitem_uid=%s reason=%s",
        operation,
        error.status,
        uid or "-",
        error,
    )
    return _status(error.status, error.reason)


def _json(dataset: Dataset | None) -> dict[str, Any]:
    return {} if dataset is None else dataset.to_json_dict()


def _dataset(body: Mapping[str, Any]) -> Dataset:
    return Dataset.from_json(dict(body))


def _only(dataset: Dataset, tags: Iterable[int]) -> Dataset:
    """``dataset`` reduced to ``tags`` (all of it when none are given)."""
    wanted = [Tag(tag) for tag in tags]
    if not wanted:
        return dataset
    reduced = Dataset()
    for tag in wanted:
        if tag in dataset:
            reduced[tag] = dataset[tag]
    return reduced


def _query(identifier: Dataset) -> list[tuple[str, str]]:
    """C-FIND identifier → the service's QIDO-style keys (hex tag paths, sequence items
    as ``sequence.attribute``); empty values are return keys, not matching keys."""
    pairs: list[tuple[str, str]] = []

    def walk(dataset: Dataset, prefix: str) -> None:
        for element in dataset:
            if element.tag.group in (0x0002, 0x0008) and element.keyword in (
                "SpecificCharacterSet",
                "QueryRetrieveLevel",
            ):
                continue
            if element.tag == Tag(0x0008, 0x1195):
                continue  # never matched (the service refuses it); a return key at most
            path = f"{prefix}{element.tag:08X}"
            if element.VR == "SQ":
                for item in element.value or []:
                    walk(item, f"{path}.")
                continue
            if element.value in (None, "", b""):
                continue
            value = element.value
            if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
                text = ",".join(str(v) for v in value)
            else:
                text = str(value)
            pairs.append((path, text))

    walk(identifier, "")
    return pairs


class UpsHandlers:
    """pynetdicom event handlers for the UPS SOP classes, bound on the node's listener."""

    def __init__(
        self,
        service: WorklistService,
        peers: Callable[[], Mapping[str, Peer]],
    ) -> None:
        self._service = service
        self._peers = peers

    def handlers(self) -> list[tuple[Any, Callable[..., Any]]]:
        return [
            (evt.EVT_N_CREATE, self.on_create),
            (evt.EVT_N_SET, self.on_set),
            (evt.EVT_N_GET, self.on_get),
            (evt.EVT_N_ACTION, self.on_action),
            (evt.EVT_C_FIND, self.on_find),
        ]

    @staticmethod
    def _actor(event: Any) -> str:
        request = event.assoc.requestor.primitive
        calling = request.calling_ae_title if request is not None else event.assoc.requestor
        return f"dicom:{str(calling).strip()}"

    def on_create(self, event: Any) -> tuple[Dataset | int, Dataset | None]:
        uid = str(event.request.AffectedSOPInstanceUID or "")
        try:
            attributes = event.attribute_list
            item = self._service.create(
                _json(attributes), uid=uid or None, actor=self._actor(event)
            )
        except UpsError as exc:
            return _refused(exc, "N-CREATE", uid), None
        except Exception as exc:  # an attribute list that cannot be decoded
            log.warning("UPS N-CREATE refused workitem_uid=%s reason=%s", uid or "-", exc)
            return _status(UNABLE_TO_PROCESS, "attribute list cannot be decoded"), None
        log.info("UPS N-CREATE workitem_uid=%s by=%s", item.uid, self._actor(event))
        return SUCCESS, _dataset(self._service.retrieve(item.uid))

    def on_set(self, event: Any) -> tuple[Dataset | int, Dataset | None]:
        uid = str(event.request.RequestedSOPInstanceUID or "")
        try:
            changes = event.modification_list
            transaction = str(changes.get("TransactionUID", "") or "") or None
            if "TransactionUID" in changes:
                del changes.TransactionUID
            self._service.update(
                uid, _json(changes), transaction_uid=transaction, actor=self._actor(event)
            )
        except UpsError as exc:
            return _refused(exc, "N-SET", uid), None
        except Exception as exc:
            log.warning("UPS N-SET refused workitem_uid=%s reason=%s", uid or "-", exc)
            return _status(UNABLE_TO_PROCESS, "modification list cannot be decoded"), None
        return SUCCESS, _only(_dataset(self._service.retrieve(uid)), changes.keys())

    def on_get(self, event: Any) -> tuple[Dataset | int, Dataset | None]:
        uid = str(event.request.RequestedSOPInstanceUID or "")
        try:
            found = _dataset(self._service.retrieve(uid))
        except UpsError as exc:
            return _refused(exc, "N-GET", uid), None
        tags = event.request.AttributeIdentifierList or []
        if not isinstance(tags, list):
            tags = [tags]
        return SUCCESS, _only(found, tags)

    def on_action(self, event: Any) -> tuple[Dataset | int, Dataset | None]:
        request = event.request
        uid = str(request.RequestedSOPInstanceUID or "")
        action = int(request.ActionTypeID or 0)
        actor = self._actor(event)
        try:
            info = event.action_information
        except Exception as exc:
            log.warning("UPS N-ACTION refused workitem_uid=%s reason=%s", uid or "-", exc)
            return _status(UNABLE_TO_PROCESS, "action information cannot be decoded"), None
        try:
            warning: UpsWarning | None = None
            if action == CHANGE_STATE:
                _, warning = self._service.change_state(uid, _json(info), actor=actor)
            elif action == REQUEST_CANCEL:
                _, warning = self._service.request_cancel(uid, _json(info) or None, actor=actor)
            elif action in (SUBSCRIBE, UNSUBSCRIBE, SUSPEND_GLOBAL):
                warning = self._subscription(action, uid, info, actor)
            else:
                return _status(NO_SUCH_ACTION, f"no UPS action {action}"), None
        except UpsError as exc:
            return _refused(exc, f"N-ACTION {action}", uid), None
        log.info("UPS N-ACTION %d workitem_uid=%s by=%s", action, uid, actor)
        if warning is not None:
            return _status(warning.status, warning.reason), None
        return SUCCESS, None

    def _subscription(
        self, action: int, uid: str, info: Dataset | None, actor: str
    ) -> UpsWarning | None:
        info = info if info is not None else Dataset()
        ae_title = str(info.get("ReceivingAE", "") or "").strip()
        if not ae_title:
            raise UpsError(0x0120, "Receiving AE (0074,1234) is required")
        if action == UNSUBSCRIBE:
            self._service.unsubscribe(ae_title, uid, actor=actor)
            return None
        if action == SUSPEND_GLOBAL:
            if uid != GLOBAL:
                raise UpsError(0x0106, f"suspend applies to the global subscription {GLOBAL}")
            self._service.suspend(ae_title, actor=actor)
            return None
        if ae_title not in self._peers():
            raise UpsError(
                UNKNOWN_RECEIVING_AE,
                f"{ae_title} is no DIMSE destination or source of this node",
            )
        lock = str(info.get("DeletionLock", "FALSE") or "FALSE").strip().upper() == "TRUE"
        keys = Dataset()
        for element in info:
            if element.tag not in _SUBSCRIBE_CONTROLS:
                keys.add(element)
        self._service.subscribe(
            ae_title,
            uid,
            deletion_lock=lock,
            filter_query=_query(keys) if uid == FILTERED_GLOBAL else (),
            actor=actor,
        )
        return None

    def on_find(self, event: Any) -> Any:
        try:
            identifier: Dataset = event.identifier
            found = self._service.search(_query(identifier))
        except UpsError as exc:
            yield _refused(exc, "C-FIND", ""), None
            return
        except Exception as exc:
            log.warning("UPS C-FIND refused reason=%s", exc)
            yield _status(UNABLE_TO_PROCESS, "identifier cannot be decoded"), None
            return
        requested = [element.tag for element in identifier]
        for match in found:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            answer = _only(_dataset(match), requested)
            if "SpecificCharacterSet" in identifier:
                answer.SpecificCharacterSet = identifier.SpecificCharacterSet
            yield MATCHING_PENDING, answer


class EventReportSender:
    """Sends each UPS event report to its subscribers by N-EVENT-REPORT (UPS Event SOP class).

    The bus calls :meth:`publish` in the thread that changed the workitem; reports are
    queued and sent from one thread, in order, one association per report and subscriber.
    A subscriber that cannot be reached is logged and skipped (the report is not retried).
    """

    def __init__(
        self,
        bus: EventBus,
        peers: Callable[[], Mapping[str, Peer]],
        *,
        calling_ae: str,
        timeout: float = 10.0,
    ) -> None:
        self._bus = bus
        self._peers = peers
        self._calling_ae = calling_ae
        self._timeout = timeout
        self._queue: queue.Queue[UpsEvent | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._unlisten: Callable[[], None] | None = None
        #: Reports delivered (status 0x0000 from the subscriber) and failed, since start.
        self.sent = 0
        self.failed = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ups-events", daemon=True)
        self._thread.start()
        self._unlisten = self._bus.listen(self._queue.put)

    def stop(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            peers = self._peers()
            for ae_title in event.subscribers:
                peer = peers.get(ae_title.strip())
                if peer is None:
                    continue  # a UPS-RS (WebSocket) subscriber: not ours to reach
                try:
                    self._send(peer, event)
                except Exception:
                    self.failed += 1
                    log.exception(
                        "N-EVENT-REPORT failed ae_title=%s workitem_uid=%s",
                        ae_title,
                        event.workitem_uid,
                    )

    def _send(self, peer: Peer, event: UpsEvent) -> None:
        ae = requestor(self._calling_ae, self._timeout)
        ae.add_requested_context(UnifiedProcedureStepEvent)
        assoc, reason = associate(ae, peer.host, peer.port, peer.ae_title, peer.tls)
        if assoc is None or not assoc.is_established:
            self.failed += 1
            log.warning(
                "N-EVENT-REPORT not sent ae_title=%s workitem_uid=%s reason=%s",
                peer.ae_title,
                event.workitem_uid,
                reason or "association refused",
            )
            return
        try:
            status, _ = assoc.send_n_event_report(
                _dataset(event.attributes),
                int(event.event_type),
                UnifiedProcedureStepPush,
                event.workitem_uid,
                meta_uid=UnifiedProcedureStepEvent,
            )
        finally:
            if assoc.is_established:
                assoc.release()
        code = int(status.Status) if status is not None and "Status" in status else -1
        if code == SUCCESS:
            self.sent += 1
            log.info(
                "N-EVENT-REPORT sent ae_title=%s workitem_uid=%s type=%s",
                peer.ae_title,
                event.workitem_uid,
                event.event_type.name,
            )
        else:
            self.failed += 1
            log.warning(
                "N-EVENT-REPORT answered status=0x%04X ae_title=%s workitem_uid=%s",
                code & 0xFFFF,
                peer.ae_title,
                event.workitem_uid,
            )
