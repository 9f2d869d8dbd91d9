"""The receive path's hand-encoded file header, its PDU reads and its reactor waits."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import AE
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.config import NodeSettings
from node.dicom import reactor
from node.dicom.file_meta import file_header
from node.dicom.network import _read_exactly
from node.dicom.scp import StorageSCP
from node.orchestration.ingest import Ingestor
from node.spool import Spool
from node.state.series import SeriesStore
from tests.support.net import free_port, wait_until


@pytest.mark.parametrize(
    ("sop_class", "sop_uid", "syntax"),
    [
        (CTImageStorage, "1.2.826.0.1.3680043.8.498.12345", ExplicitVRLittleEndian),  # odd
        (CTImageStorage, "1.2.826.0.1.3680043.8.498.123456", JPEG2000Lossless),  # even
        ("1.2.840.10008.5.1.4.1.1.88.33", "1.2.3", "1.2.840.10008.1.2"),
    ],
)
def test_file_header_is_what_pynetdicom_writes(sop_class: str, sop_uid: str, syntax: str) -> None:
    meta = create_file_meta(
        sop_class_uid=sop_class, sop_instance_uid=sop_uid, transfer_syntax=syntax
    )
    expected = b"\x00" * 128 + b"DICM" + encode_file_meta(meta)
    assert file_header(sop_class, sop_uid, syntax) == expected


def test_a_pdu_is_read_whole_across_many_sends_and_short_when_the_peer_closes() -> None:
    left, right = socket.socketpair()
    payload = bytes(range(256)) * 4096  # 1 MiB, more than one socket buffer
    sender = threading.Thread(
        target=lambda: [
            right.sendall(payload[i : i + 65536]) for i in range(0, len(payload), 65536)
        ]
    )
    sender.start()
    assert _read_exactly(left, len(payload)) == payload
    sender.join()
    right.sendall(b"abc")
    right.close()
    assert _read_exactly(left, 10) == b"abc"  # the connection closed after 3 of 10 bytes
    left.close()


def test_an_idle_association_waits_instead_of_polling(tmp_path, database, clock) -> None:
    """pynetdicom's reactors wake every millisecond; the SCP's wait for work (at most
    ``MAX_WAIT``), and still answer at once: a C-ECHO round trip during the wait."""
    port = free_port()
    settings = NodeSettings(ae_title="AINODE", dicom_port=port, bind_address="127.0.0.1")
    ingestor = Ingestor(Spool(tmp_path / "spool"), SeriesStore(database), clock=clock)
    scp = StorageSCP(settings, ingestor)
    scp.start()
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(Verification)
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
        assert assoc.is_established
        (served,) = [a for a in scp._ae.active_associations if a.is_acceptor]
        wakers = [served._ainode_waker, served.dul._ainode_waker]
        counts = [0, 0]
        for index, waker in enumerate(wakers):
            wait = waker.wait

            def counted(seconds: float, wait=wait, index=index) -> bool:
                replaced = wait(seconds)
                counts[index] += int(replaced)
                return replaced

            waker.wait = counted
        wait_until(lambda: min(counts) > 0, 5, message="both reactors waiting")
        before = list(counts)
        time.sleep(0.5)
        idle = [after - start for after, start in zip(counts, before, strict=True)]
        # Polling every 1 ms would be about 500 wake-ups each; waiting, at most ~25.
        assert all(0 < n <= 0.5 / reactor.MAX_WAIT + 10 for n in idle), idle
        assert int(assoc.send_c_echo().Status) == 0
        assoc.release()
        assert assoc.is_released
    finally:
        scp.stop()
