"""The DICOM listener: C-ECHO and C-STORE for every storage SOP class, and the UPS SOP
classes (the worklist over DIMSE, :mod:`node.dicom.ups`) when the node has a worklist.

The C-STORE handler does no heavy work. It reads the identifiers it needs,
hands the encoded bytes to :class:`~node.orchestration.ingest.Ingestor`, and returns
0x0000 only once the instance is durable; every refusal is logged with the
SOP Instance UID and the reason.

The listener remembers which series each association carried. An association
that ends in an abort (an A-ABORT, or a connection dropped without release:
pynetdicom reports both as aborted) holds the
completion of those series for ``aborted_grace_seconds``, so a partial series
waits for the sender's retry; one that is released ends such a hold.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import logging
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from node.config import NodeSettings
from node.dicom import known_uids, status
from node.dicom.file_meta import file_header
from node.dicom.identifiers import scan
from node.dicom.inline_store import serve_stores_on_reader
from node.dicom.network import read_whole_pdus, set_nodelay
from node.dicom.pdata import decode_pdata_directly
from node.dicom.quiet_logging import quiet_standard_logging
from node.dicom.reactor import stop_waking, wake_on_work
from node.dicom.reactor_pause import pause_safely
from node.dicom.refusals import association_refused
from node.dicom.store_response import respond_fast
from node.dicom.ups import UPS_SOP_CLASSES, UpsHandlers
from node.errors import SpoolError
from node.faults import fault_point
from node.orchestration.ingest import IncomingInstance, Ingestor, Outcome, OutOfResources
from node.pixel_length import pixel_data_problem
from node.spool import is_valid_uid
from node.state.dicom_audit import AuditOutcome, DicomAudit, EventType

log = logging.getLogger(__name__)

#: Uncompressed syntaxes plus the compressed ones pydicom can decode (with pylibjpeg).
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]


class _SharedUIDContext(PresentationContext):
    """A supported presentation context that copies without re-validating its UIDs.

    pynetdicom deep-copies the listener's supported contexts for every association it
    accepts; for about 170 storage classes x 13 transfer syntaxes that re-creates (and
    regex-validates) some 2,400 UIDs, about 0.1 s of CPU per association before its first
    C-STORE. UIDs are immutable, so this copy shares them and copies only the mutable
    attributes (the transfer syntax list; the rest are scalars).
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> _SharedUIDContext:
        twin = copy.copy(self)
        twin._transfer_syntax = list(self._transfer_syntax)
        return twin

    @classmethod
    def of(cls, context: PresentationContext) -> _SharedUIDContext:
        twin = cls.__new__(cls)
        twin.__dict__.update(copy.deepcopy(vars(context)))
        return twin


def _peer(event: Any) -> tuple[str, str]:
    """The calling AE title and the called AE title the sender asked for.

    The called title comes from the A-ASSOCIATE-RQ: the acceptor's ``ae_title`` is the
    node's own, whatever the sender called (the node accepts any called title, so rules
    can route on it).
    """
    assoc = event.assoc
    request = assoc.requestor.primitive
    if request is None:
        return str(assoc.requestor.ae_title).strip(), str(assoc.acceptor.ae_title).strip()
    # From the request: at EVT_REQUESTED the requestor's title is not yet filled in.
    return str(request.calling_ae_title).strip(), str(request.called_ae_title).strip()


#: PS3.8 A-ASSOCIATE-RJ diagnostics (result 1 rejected-permanent, source 1 service-user).
CALLING_AE_NOT_RECOGNIZED = 0x03
CALLED_AE_NOT_RECOGNIZED = 0x07

#: Associations the node serves at once, over all its receiving processes; one more is
#: rejected (PS3.8: rejected-transient, service-provider presentation, local limit exceeded).
MAXIMUM_ASSOCIATIONS = 32


def access_refusal(settings: NodeSettings, calling: str, called: str, address: str) -> str | None:
    """Why ``node.accept`` refuses this association, or None when it is allowed.

    Returns ``"calling-ae"`` (unknown calling AE, or a known one from a host not
    listed) or ``"called-ae"`` (a called title neither the node's nor an alias).
    Without ``node.accept`` every association is allowed.
    """
    if settings.accept is None:
        return None
    try:
        peer = ipaddress.ip_address(address)
    except ValueError:
        peer = None
    allowed = False
    for entry in settings.accept:
        if entry.ae_title.strip() != calling:
            continue
        networks = entry.networks()
        if not networks or (peer is not None and any(peer in net for net in networks)):
            allowed = True
            break
    if not allowed:
        return "calling-ae"
    own = {settings.ae_title.strip(), *(alias.strip() for alias in settings.ae_aliases)}
    if called not in own:
        return "called-ae"
    return None


#: Hands an accepted, not yet wrapped connection to another process: ``(socket, tls)`` ->
#: True when it was handed (the caller closes its copy), False to serve it here.
HandOff = Callable[[socket.socket, bool], bool]


class _TlsInItsThread(ThreadedAssociationServer):
    """Negotiates TLS in the connection's own thread, not in the thread that accepts (or
    is handed) connections: a client that connects and stays silent holds only its own
    thread, until the listener context's handshake timeout (:mod:`node.tls`)."""

    #: Called when a connection could not be served after all (its TLS handshake failed).
    on_dropped: Callable[[], None] | None = None

    def finish_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        context = self.ssl_context
        if (
            context is not None
            and isinstance(request, socket.socket)
            and not isinstance(request, ssl.SSLSocket)
        ):
            try:  # the node's context limits the handshake's time and logs a refusal
                request = context.wrap_socket(request, server_side=True)
            except OSError:
                request.close()
                if self.on_dropped is not None:
                    self.on_dropped()
                return
        super().finish_request(request, client_address)


class _HandingServer(_TlsInItsThread):
    """The node's listener: each accepted connection is offered to :attr:`hand_off` (the
    receiver processes) before it is served here."""

    hand_off: HandOff | None = None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        hand_off = self.hand_off
        try:
            handed = hand_off is not None and hand_off(client, self.ssl_context is not None)
        except Exception:  # never let the accept loop die: serve the connection here
            log.exception("handing a connection to a receiver process failed")
            handed = False
        if handed:
            client.close()  # the receiver process holds its own descriptor
            # socketserver ignores an OSError from get_request: nothing to serve here.
            raise OSError("connection handed to a receiver process")
        return client, address  # TLS is negotiated in its own thread (finish_request)


class _HandedServer(_TlsInItsThread):
    """A receiver process's server: it never listens; the connections it serves are handed
    to it by the node's listener (:meth:`StorageSCP.take`)."""

    def server_bind(self) -> None:
        pass

    def server_activate(self) -> None:
        pass

    def shutdown(self) -> None:  # no serve_forever loop to stop
        self.server_close()
        with contextlib.suppress(ValueError):
            self.ae._servers.remove(self)


class StorageSCP:
    """A pynetdicom application entity serving C-ECHO and C-STORE.

    ``handed``: a receiver process's SCP, which does not listen: the node's listener hands
    it connections (:meth:`take`). The node's own SCP may hand its connections on
    (:meth:`hand_off_with`).
    """

    def __init__(
        self,
        settings: NodeSettings,
        ingestor: Ingestor,
        *,
        aborted_grace_seconds: float = 300.0,
        audit: DicomAudit | None = None,
        handed: bool = False,
    ) -> None:
        self._settings = settings
        self._handed = handed
        #: Called as each connection this process served closes (:meth:`report_closes`).
        self._on_closed: Callable[[], None] | None = None
        #: Other processes' counters added to :attr:`counts` (the receiver processes).
        self._more_counts: list[Callable[[], Mapping[str, int]]] = []
        #: Open connections over every receiving process (:meth:`limit_over_all`).
        self._open_over_all: Callable[[], int] | None = None
        #: The UPS Push/Pull/Watch/Event handlers (the worklist over DIMSE), if any.
        self._ups: UpsHandlers | None = None
        self._ingestor = ingestor
        self._grace = aborted_grace_seconds
        self._audit = audit
        # Per open association: instances stored (or duplicates) per series.
        self._carried: dict[object, Counter[str]] = {}
        self._servers: list[ThreadedAssociationServer] = []
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        known_uids.install()  # each association's proposed UIDs validated once per process
        ae = AE(ae_title=settings.ae_title)
        ae.maximum_pdu_size = settings.max_pdu
        ae.maximum_associations = MAXIMUM_ASSOCIATIONS
        ae.network_timeout = settings.idle_timeout_seconds
        ae.dimse_timeout = 60
        ae.require_called_aet = False
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
        self._ae = ae

    def serve_ups(self, handlers: UpsHandlers) -> None:
        """Also serve the UPS SOP classes with ``handlers`` (before :meth:`start`)."""
        self._ups = handlers
        for sop_class in UPS_SOP_CLASSES:
            self._ae.add_supported_context(sop_class, TRANSFER_SYNTAXES[:3])

    @property
    def counts(self) -> dict[str, int]:
        """Counters since start: stored, bytes, duplicates, refused, associations; with
        receiver processes (:meth:`add_counts`) the sum over all of them."""
        with self._counts_lock:
            total = Counter(self._counts)
        for more in self._more_counts:
            total.update(more())
        return dict(total)

    @property
    def own_counts(self) -> dict[str, int]:
        """This process's counters only."""
        with self._counts_lock:
            return dict(self._counts)

    def add_counts(self, source: Callable[[], Mapping[str, int]]) -> None:
        """Add ``source()`` (another process's counters) to :attr:`counts`."""
        self._more_counts.append(source)

    def _count(self, key: str, amount: int = 1) -> None:
        with self._counts_lock:
            self._counts[key] += amount

    @property
    def running(self) -> bool:
        return bool(self._servers)

    def start(self) -> None:
        handlers = [
            (evt.EVT_CONN_OPEN, set_nodelay),
            (evt.EVT_CONN_OPEN, quiet_standard_logging),
            (evt.EVT_CONN_OPEN, read_whole_pdus),
            (evt.EVT_CONN_OPEN, decode_pdata_directly),
            (evt.EVT_CONN_OPEN, respond_fast),
            (evt.EVT_CONN_OPEN, serve_stores_on_reader),
            (evt.EVT_CONN_OPEN, wake_on_work),
            (evt.EVT_CONN_OPEN, pause_safely),
            (evt.EVT_CONN_CLOSE, stop_waking),
            (evt.EVT_CONN_CLOSE, self._closed),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            *(self._ups.handlers() if self._ups is not None else []),
        ]
        tls = self._settings.tls
        listeners: list[tuple[int, ssl.SSLContext | None]] = []
        if self._settings.plain_dicom:
            listeners.append((self._settings.dicom_port, None))
        if tls is not None:
            listeners.append((tls.port, tls.context()))
        for port, context in listeners:
            server = self._listen(port, context, handlers)
            server.contexts = [_SharedUIDContext.of(cx) for cx in server.contexts]
            self._servers.append(server)
            log.info(
                "DICOM %s ae_title=%s port=%s tls=%s max_pdu=%s",
                "connections handed from the node's listener" if self._handed else "listener up",
                self._settings.ae_title,
                port,
                "off" if context is None else "on",
                self._settings.max_pdu,
            )

    def _listen(
        self, port: int, context: ssl.SSLContext | None, handlers: list[Any]
    ) -> ThreadedAssociationServer:
        """A running listener on ``port``, or (``handed``) a server that only serves the
        connections handed to it."""
        address = (self._settings.bind_address, port)
        server_class = _HandedServer if self._handed else _HandingServer
        server = self._ae.make_server(
            address, ssl_context=context, evt_handlers=handlers, server_class=server_class
        )
        if not self._handed:  # AE.start_server(block=False), with the server class swapped
            threading.Thread(
                target=server.serve_forever, name=f"AcceptorServer@{port}", daemon=True
            ).start()
        self._ae._servers.append(server)
        return server

    def report_closes(self, on_closed: Callable[[], None]) -> None:
        """Call ``on_closed`` as each connection this process serves closes, or is dropped
        before its association started (a TLS handshake refused): the count of open
        connections per process stays exact (before :meth:`hand_off_with` or :meth:`take`)."""
        self._on_closed = on_closed
        for server in self._servers:
            if isinstance(server, _TlsInItsThread):
                server.on_dropped = on_closed

    def limit_over_all(self, open_connections: Callable[[], int]) -> None:
        """Reject an association while ``open_connections()`` (those of every receiving
        process, this one's included) is over :data:`MAXIMUM_ASSOCIATIONS`: the node's
        limit, not each process's (the listener serves such a connection here)."""
        self._open_over_all = open_connections

    def hand_off_with(self, hand_off: HandOff) -> None:
        """Offer each accepted connection to ``hand_off`` (the receiver processes) before
        serving it here."""
        for server in self._servers:
            if isinstance(server, _HandingServer):
                server.hand_off = hand_off

    def take(self, client: socket.socket, tls: bool) -> None:
        """Serve a connection the node's listener accepted (a receiver process): TLS is
        negotiated in its own thread when it came to the TLS port."""
        server = next((s for s in self._servers if (s.ssl_context is not None) == tls), None)
        try:
            if server is None:
                raise OSError(f"this process serves no {'TLS' if tls else 'plain'} port")
            address = client.getpeername()
        except OSError as exc:
            log.warning("handed connection dropped tls=%s error=%s", tls, exc)
            client.close()
            if self._on_closed is not None:
                self._on_closed()
            return
        server.process_request(client, address)

    def _closed(self, event: Any) -> None:
        if self._on_closed is not None:
            self._on_closed()

    def stop(self) -> None:
        while self._servers:
            self._servers.pop().shutdown()

    # -- event handlers -------------------------------------------------------

    def _on_requested(self, event: Any) -> None:
        """Reject an association ``node.accept`` does not allow, or one over the node's
        limit (PS3.8 A-ASSOCIATE-RJ)."""
        assoc = event.assoc
        calling, called = _peer(event)
        if self._open_over_all is not None and self._open_over_all() > MAXIMUM_ASSOCIATIONS:
            association_refused("too_many_associations")
            assoc.acse.send_reject(0x02, 0x03, 0x02)  # transient: local limit exceeded
            evt.trigger(assoc, evt.EVT_REJECTED, {})  # logged and audited there
            assoc.kill()
            return
        address = str(assoc.requestor.address)
        refusal = access_refusal(self._settings, calling, called, address)
        if refusal is None:
            return
        diagnostic = (
            CALLING_AE_NOT_RECOGNIZED if refusal == "calling-ae" else CALLED_AE_NOT_RECOGNIZED
        )
        association_refused(f"{refusal.replace('-', '_')}_not_recognized")
        log.warning(
            "association rejected calling_ae=%s called_ae=%s peer=%s reason=%s-not-recognized",
            calling,
            called,
            address,
            refusal,
        )
        assoc.acse.send_reject(0x01, 0x01, diagnostic)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def _on_accepted(self, event: Any) -> None:
        calling, called = _peer(event)
        self._count("associations")
        log.info("association accepted calling_ae=%s called_ae=%s", calling, called)
        self._record(event, EventType.ASSOCIATION_ACCEPTED, detail=f"called AE {called}")

    def _on_rejected(self, event: Any) -> None:
        """Audit every rejection pynetdicom reports (whoever decided it).

        pynetdicom refuses by itself only past ``maximum_associations`` here (no AE title
        is required), counted here; refusals decided by the node count themselves.
        """
        calling, called = _peer(event)
        acceptors = [a for a in self._ae.active_associations if a.is_acceptor]
        if len(acceptors) > self._ae.maximum_associations:
            association_refused("too_many_associations")
        reply = event.assoc.acceptor.primitive
        reason = (
            f"{reply.result_str}, {reply.source_str}: {reply.reason_str}"
            if reply is not None and reply.result is not None
            else "rejected"
        )
        log.warning("association rejected calling_ae=%s reason=%s", calling, reason)
        self._record(
            event,
            EventType.ASSOCIATION_REJECTED,
            outcome=AuditOutcome.MINOR_FAILURE,
            detail=f"called AE {called}; {reason}",
        )

    def _record(self, event: Any, kind: EventType, **fields: Any) -> None:
        if self._audit is not None:
            calling, _ = _peer(event)
            requestor = event.assoc.requestor
            peer = f"{requestor.address}:{requestor.port}"
            self._audit.record_safely(kind, actor=calling, peer=peer, **fields)

    def _on_released(self, event: Any) -> None:
        calling, _ = _peer(event)
        log.info("association released calling_ae=%s", calling)
        self._ended(event, "released")

    def _on_aborted(self, event: Any) -> None:
        calling, _ = _peer(event)
        log.warning("association aborted calling_ae=%s", calling)
        self._ended(event, "aborted")

    def _ended(self, event: Any, how: str) -> None:
        """Hold or release the series the association carried (once, on the first event)."""
        with self._counts_lock:
            series = self._carried.pop(event.assoc, None)
        if not series:
            return
        if self._audit is not None:
            ok = AuditOutcome.SUCCESS if how == "released" else AuditOutcome.MINOR_FAILURE
            for series_uid, count in series.items():
                self._record(
                    event,
                    EventType.INSTANCES_RECEIVED,
                    outcome=ok,
                    study_uid=self._audit.study_of(series_uid),
                    series_uid=series_uid,
                    instances=count,
                    detail=f"association {how}",
                )
        calling, _ = _peer(event)
        if how == "released":
            self._ingestor.sender_finished(
                series, f"a later association from {calling} ended normally"
            )
            return
        reason = f"waited for an aborted association from {calling}"
        self._ingestor.sender_cut_off(series, reason, self._grace)

    def _on_echo(self, event: Any) -> int:
        return status.SUCCESS

    def _refuse(self, code: int, sop_uid: str, reason: str) -> int:
        self._count("refused")
        log.warning(
            "C-STORE refused status=0x%04X sop_uid=%s reason=%s", code, sop_uid or "?", reason
        )
        return code

    def _on_store(self, event: Any) -> int:
        fault_point("instance_received")
        request = event.request
        requested_sop = str(request.AffectedSOPInstanceUID or "")
        requested_class = str(request.AffectedSOPClassUID or "")
        transfer_syntax = str(event.context.transfer_syntax)
        with request.DataSet.getbuffer() as received:
            scanned = scan(received, transfer_syntax)
        try:
            # The elements read here only, or (scan declined) the whole data set by pydicom.
            dataset: Dataset = event.dataset if scanned is None else scanned[0]
            sop_uid = str(dataset.get("SOPInstanceUID", "") or "")
            sop_class = str(dataset.get("SOPClassUID", "") or "")
            series_uid = str(dataset.get("SeriesInstanceUID", "") or "")
            study_uid = str(dataset.get("StudyInstanceUID", "") or "")
            modality = str(dataset.get("Modality", "") or "")
        except Exception as exc:  # any decoding failure is the sender's malformed data set
            return self._refuse(
                status.CANNOT_UNDERSTAND, requested_sop, f"data set cannot be decoded: {exc}"
            )
        for name, uid in (
            ("SOPInstanceUID", sop_uid),
            ("SeriesInstanceUID", series_uid),
            ("StudyInstanceUID", study_uid),
        ):
            if not is_valid_uid(uid):
                return self._refuse(
                    status.MISSING_IDENTIFIER, requested_sop, f"{name} missing or malformed"
                )
        if sop_uid != requested_sop:
            return self._refuse(
                status.SOP_INSTANCE_MISMATCH,
                requested_sop,
                "SOPInstanceUID differs from the request's Affected SOP Instance UID",
            )
        if sop_class and sop_class != requested_class:
            return self._refuse(
                status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                requested_sop,
                "SOPClassUID differs from the request's Affected SOP Class UID",
            )
        pixel_length = None if scanned is None or scanned[1] < 0 else scanned[1]
        problem = pixel_data_problem(dataset, transfer_syntax, pixel_length=pixel_length)
        if problem is not None:
            return self._refuse(status.PIXEL_DATA_MISMATCH, sop_uid, problem)
        calling, called = _peer(event)
        incoming = IncomingInstance(
            sop_uid=sop_uid,
            sop_class_uid=requested_class,
            series_uid=series_uid,
            study_uid=study_uid,
            transfer_syntax=transfer_syntax,
            modality=modality,
            calling_ae=calling,
            called_ae=called,
        )
        # The data set exactly as the sender encoded it, written after a file header from
        # pynetdicom's buffer (no joined copy of the instance).
        header = file_header(requested_class, sop_uid, transfer_syntax)
        with event.request.DataSet.getbuffer() as received:
            size = len(header) + len(received)
            try:
                outcome = self._ingestor.accept(incoming, (header, received))
            except OutOfResources as exc:
                return self._refuse(status.OUT_OF_RESOURCES, sop_uid, str(exc))
            except SpoolError as exc:
                return self._refuse(status.OUT_OF_RESOURCES, sop_uid, str(exc))
        self._count("duplicates" if outcome is Outcome.DUPLICATE else "stored")
        with self._counts_lock:
            self._carried.setdefault(event.assoc, Counter())[series_uid] += 1
        if outcome is Outcome.STORED:
            self._count("bytes", size)
        fault_point("instance_stored")
        return status.SUCCESS
