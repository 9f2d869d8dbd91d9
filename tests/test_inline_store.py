"""C-STORE requests are served on the reader's thread, everything else as pynetdicom does."""

from __future__ import annotations

import threading
import time
from io import BytesIO
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from node.dicom.inline_store import serve_stores_on_reader, storage_context
from node.dicom.reactor import stop_waking, wake_on_work
from node.dicom.reactor_pause import pause_safely
from tests.support.net import wait_until
from tests.support.scp import ct_listener
from tests.support.scu import associate, ct_requestor

#: The node's handlers that change how an association's threads work, in its order.
NODE_HANDLERS = [
    (evt.EVT_CONN_OPEN, serve_stores_on_reader),
    (evt.EVT_CONN_OPEN, wake_on_work),
    (evt.EVT_CONN_OPEN, pause_safely),
    (evt.EVT_CONN_CLOSE, stop_waking),
]


class Served:
    """Which thread ran each request's handler, in order, and what it stored."""

    def __init__(self, echo_seconds: float = 0.0) -> None:
        self.calls: list[tuple[str, threading.Thread, Any]] = []
        self.stored: list[Dataset] = []
        self._echo_seconds = echo_seconds

    def on_store(self, event: Any) -> int:
        self.calls.append(("store", threading.current_thread(), event.assoc))
        self.stored.append(event.dataset)
        return 0x0000

    def on_echo(self, event: Any) -> int:
        self.calls.append(("echo", threading.current_thread(), event.assoc))
        time.sleep(self._echo_seconds)
        return 0x0000


def _listener(served: Served, *extra: Any, inline: bool = True) -> Any:
    return ct_listener(
        [
            *(NODE_HANDLERS if inline else NODE_HANDLERS[1:]),
            (evt.EVT_C_STORE, served.on_store),
            (evt.EVT_C_ECHO, served.on_echo),
            *extra,
        ]
    )


def _ct(number: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.InstanceNumber = number
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _context_id(assoc: Any, abstract_syntax: str) -> int:
    return next(
        cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == abstract_syntax
    )


def test_stores_are_served_by_the_reader_and_other_requests_by_the_association_thread() -> None:
    served = Served()
    with _listener(served) as (ae, port):
        assoc = associate(ct_requestor(), "127.0.0.1", port, ae_title="AINODE")
        assert assoc.is_established
        sent = [_ct(n) for n in range(3)]
        statuses = [assoc.send_c_store(ds).Status for ds in sent]
        statuses.append(assoc.send_c_echo().Status)
        statuses.append(assoc.send_c_store(_ct(3)).Status)
        assoc.release()
        assert assoc.is_released
        wait_until(lambda: not ae.active_associations, 10, message="acceptor ended")
    assert statuses == [0x0000] * 5
    kinds = [kind for kind, _, _ in served.calls]
    assert kinds == ["store", "store", "store", "echo", "store"]
    for kind, thread, acceptor in served.calls:
        # pynetdicom's DUL reactor and its Association are both the threads themselves.
        assert thread is (acceptor.dul if kind == "store" else acceptor), (kind, thread)
    assert [ds.SOPInstanceUID for ds in served.stored[:3]] == [ds.SOPInstanceUID for ds in sent]


def test_a_real_file_is_stored_whole_on_the_reader() -> None:
    """A multi-PDU instance (pydicom's CT, 128 KiB PDUs would split larger ones)."""
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    served = Served()
    with _listener(served) as (ae, port):
        requestor = ct_requestor()
        requestor.maximum_pdu_size = 16384
        ae.maximum_pdu_size = 16384
        assoc = associate(requestor, "127.0.0.1", port, ae_title="AINODE")
        assert assoc.is_established
        assert assoc.send_c_store(path).Status == 0x0000
        assoc.release()
    ((kind, thread, acceptor),) = served.calls
    assert kind == "store" and thread is acceptor.dul
    original = dcmread(path)
    assert served.stored[0].PixelData == original.PixelData


def test_a_store_arriving_while_another_request_is_served_waits_its_turn() -> None:
    """A sender that does not wait for the echo's response: its C-STORE reaches the
    listener while the association thread still serves the echo, so it is queued and
    served after it, by the association thread, as pynetdicom would."""
    served = Served(echo_seconds=0.5)
    with _listener(served) as (ae, port):
        assoc = associate(ct_requestor(), "127.0.0.1", port, ae_title="AINODE")
        assert assoc.is_established
        # Pause our own reactor so that both responses come to us (as send_* does).
        assoc._reactor_checkpoint.clear()
        wait_until(lambda: assoc._is_paused, 5, message="requestor paused")
        echo = C_ECHO()
        echo.MessageID = 1
        echo.AffectedSOPClassUID = Verification
        store = C_STORE()
        store.MessageID = 2
        store.AffectedSOPClassUID = CTImageStorage
        ds = _ct(0)
        store.AffectedSOPInstanceUID = ds.SOPInstanceUID
        store.Priority = 2
        store.DataSet = BytesIO(encode(ds, False, True))
        assoc.dimse.send_msg(echo, _context_id(assoc, Verification))
        time.sleep(0.1)  # the echo is being served
        assoc.dimse.send_msg(store, _context_id(assoc, CTImageStorage))
        responses = [assoc.dimse.get_msg(block=True)[1] for _ in range(2)]
        assoc._reactor_checkpoint.set()
        assoc.release()
        wait_until(lambda: not ae.active_associations, 10, message="acceptor ended")
    assert [type(r).__name__ for r in responses] == ["C_ECHO", "C_STORE"]
    assert [r.Status for r in responses] == [0x0000, 0x0000]
    assert [kind for kind, _, _ in served.calls] == ["echo", "store"]
    for _, thread, acceptor in served.calls:
        assert thread is acceptor  # both by the association thread


def _non_storage_store_outcome(inline: bool) -> tuple[bool, int]:
    """A C-STORE of a SOP class pynetdicom knows no service for (on the CT context): it
    aborts. Returns (aborted, store handler calls)."""
    served = Served()
    with _listener(served, inline=inline) as (ae, port):
        assoc = associate(ct_requestor(), "127.0.0.1", port, ae_title="AINODE")
        assert assoc.is_established
        store = C_STORE()
        store.MessageID = 1
        store.AffectedSOPClassUID = "1.2.826.0.1.3680043.10.1367.1"  # private
        store.AffectedSOPInstanceUID = generate_uid()
        store.Priority = 2
        store.DataSet = BytesIO(b"\x08\x00\x18\x00UI\x02\x001\x00")
        assoc._reactor_checkpoint.clear()
        wait_until(lambda: assoc._is_paused, 5, message="requestor paused")
        assoc.dimse.send_msg(store, _context_id(assoc, CTImageStorage))
        assoc._reactor_checkpoint.set()  # our reactor sees the abort (or a response)
        wait_until(lambda: assoc.is_aborted or not assoc.is_established, 10, message="ended")
        aborted = assoc.is_aborted
        wait_until(lambda: not ae.active_associations, 10, message="acceptor ended")
    return aborted, len(served.calls)


def test_a_store_that_arrives_before_the_association_is_established_is_answered() -> None:
    """pynetdicom sends the A-ASSOCIATE-AC, then runs the EVT_ACCEPTED handlers (the
    node's audit record), then marks the association established. A sender's first
    C-STORE arriving meanwhile must wait for the association thread: served on the reader,
    the storage service would find the association not established and answer nothing
    (the sender waited out its DIMSE timeout; seen with the node's audit write)."""
    served = Served()
    slow_accept = (evt.EVT_ACCEPTED, lambda event: time.sleep(0.5))
    with _listener(served, slow_accept) as (ae, port):
        requestor = ct_requestor()
        requestor.dimse_timeout = 10
        assoc = associate(requestor, "127.0.0.1", port, ae_title="AINODE")
        assert assoc.is_established
        started = time.monotonic()
        assert assoc.send_c_store(_ct(0)).Status == 0x0000
        assert time.monotonic() - started < 5
        assoc.release()
        wait_until(lambda: not ae.active_associations, 10, message="acceptor ended")
    ((kind, thread, acceptor),) = served.calls
    assert kind == "store" and thread is acceptor  # queued for the association thread


def test_a_store_pynetdicom_does_not_serve_is_left_to_it() -> None:
    assert _non_storage_store_outcome(inline=True) == _non_storage_store_outcome(inline=False)
    assert _non_storage_store_outcome(inline=True) == (True, 0)


def test_an_error_escaping_the_storage_service_aborts_the_association(monkeypatch) -> None:
    """pynetdicom aborts when a service class raises; on the reader the abort must not
    wait for the reader itself (it would hang until the connection timed out)."""

    def broken(self: Any, req: Any, context: Any) -> None:
        raise RuntimeError("storage service broken")

    monkeypatch.setattr(StorageServiceClass, "SCP", broken)
    served = Served()
    with _listener(served) as (ae, port):
        assoc = associate(ct_requestor(), "127.0.0.1", port, ae_title="AINODE")
        assert assoc.is_established
        started = time.monotonic()
        status = assoc.send_c_store(_ct(0))
        assert not status  # no response: the association was aborted
        wait_until(lambda: assoc.is_aborted, 10, message="abort seen by the sender")
        wait_until(lambda: not ae.active_associations, 10, message="acceptor ended")
        assert time.monotonic() - started < 10
        # The listener still serves the next sender.
        assoc = associate(ct_requestor(), "127.0.0.1", port, ae_title="AINODE")
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()


def test_storage_context_is_pynetdicoms_choice_of_service() -> None:
    served = Served()
    with _listener(served) as (ae, port):
        assoc = associate(ct_requestor(), "127.0.0.1", port, ae_title="AINODE")
        assert assoc.is_established
        wait_until(lambda: ae.active_associations, 5, message="acceptor")
        (acceptor,) = ae.active_associations
        ct = _context_id(acceptor, CTImageStorage)
        store = C_STORE()
        store.MessageID = 1
        store.AffectedSOPClassUID = CTImageStorage
        store.AffectedSOPInstanceUID = generate_uid()
        store.Priority = 2
        store.DataSet = BytesIO(b"")
        context = storage_context(acceptor, store, ct)
        assert isinstance(context, PresentationContext) and context.context_id == ct
        assert storage_context(acceptor, store, 255) is None  # not accepted
        store.AffectedSOPClassUID = Verification
        assert storage_context(acceptor, store, ct) is None  # not a storage class
        response = C_STORE()
        response.MessageIDBeingRespondedTo = 1
        response.Status = 0
        assert storage_context(acceptor, response, ct) is None
        echo = C_ECHO()
        echo.MessageID = 1
        echo.AffectedSOPClassUID = Verification
        assert storage_context(acceptor, echo, ct) is None
        assoc.release()
