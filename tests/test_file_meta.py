"""The receive path's hand-encoded file header and its PDU reads."""

from __future__ import annotations

import socket
import threading

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from node.dicom.file_meta import file_header
from node.dicom.network import _read_exactly


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
