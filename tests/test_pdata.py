"""P-DATA-TF PDUs reach the DIMSE layer as views, with pynetdicom's result and errors."""

from __future__ import annotations

import logging
import struct
from typing import Any

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import evt
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from node.dicom.pdata import decode_pdata_directly, presentation_data_values
from node.dicom.quiet_logging import quiet_standard_logging
from tests.support.net import wait_until
from tests.support.scp import ct_listener
from tests.support.scu import associate, ct_requestor


def _encoded(values: list[tuple[int, bytes]]) -> bytes:
    primitive = P_DATA()
    primitive.presentation_data_value_list = [[cx, value] for cx, value in values]  # type: ignore[misc]
    return P_DATA_TF(primitive).encode()


def _pynetdicom_values(pdu: bytes) -> list[tuple[int, bytes]]:
    decoded = P_DATA_TF()
    decoded.decode(pdu)
    return [(cx, bytes(value)) for cx, value in decoded.to_primitive().presentation_data_value_list]


def test_values_are_pynetdicoms_as_views_of_the_pdu() -> None:
    values = [(1, b"\x03" + b"c" * 9), (1, b"\x00" + bytes(range(256)) * 40), (3, b"\x02\x01")]
    pdu = bytearray(_encoded(values))
    items = presentation_data_values(pdu)
    assert items is not None
    assert [(cx, bytes(view)) for cx, view in items] == _pynetdicom_values(bytes(pdu))
    assert all(view.obj is pdu for _, view in items)  # no copy


@pytest.mark.parametrize(
    "pdu",
    [
        _encoded([(1, b"\x03abc")])[:-1],  # an item longer than the PDU
        _encoded([(1, b"\x03abc")]) + b"\x00\x00",  # bytes left that are no item
        b"\x04\x00" + struct.pack(">L", 5) + struct.pack(">L", 1) + b"\x01",  # empty value
        b"\x04\x00" + struct.pack(">L", 0),  # no item at all
    ],
    ids=["item-past-the-end", "trailing-bytes", "empty-value", "no-items"],
)
def test_a_pdu_it_cannot_decode_exactly_is_left_to_pynetdicom(pdu: bytes) -> None:
    assert presentation_data_values(bytearray(pdu)) is None


class Received:
    def __init__(self) -> None:
        self.data_sets: list[bytes] = []

    def on_store(self, event: Any) -> int:
        self.data_sets.append(event.request.DataSet.getvalue())
        return 0x0000


def _listener(received: Received, *handlers: Any) -> Any:
    return ct_listener(
        [
            (evt.EVT_CONN_OPEN, decode_pdata_directly),
            (evt.EVT_CONN_OPEN, quiet_standard_logging),  # as the node: no PDU logging
            (evt.EVT_C_STORE, received.on_store),
            *handlers,
        ],
        max_pdu=16384,  # an instance in many PDUs
    )


def _ct() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 128
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    pixels = np.random.default_rng(7).integers(0, 4096, (128, 128), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _count_generic_decodes(monkeypatch: Any) -> list[int]:
    calls = [0]
    generic = P_DATA_TF.decode

    def counted(self: P_DATA_TF, bytestream: bytes) -> None:
        calls[0] += 1
        generic(self, bytestream)

    monkeypatch.setattr(P_DATA_TF, "decode", counted)
    return calls


@pytest.mark.parametrize("pdu_handler", [False, True], ids=["direct", "pdu-handler-bound"])
def test_a_multi_pdu_instance_arrives_byte_for_byte(monkeypatch: Any, pdu_handler: bool) -> None:
    """32 KiB of pixels in 16 KiB PDUs; with an ``EVT_PDU_RECV`` handler bound the PDUs
    take pynetdicom's decoding (its handlers get its PDU objects) and the result is the same."""
    generic_decodes = _count_generic_decodes(monkeypatch)
    seen: list[Any] = []
    extra = [(evt.EVT_PDU_RECV, lambda event: seen.append(event.pdu))] if pdu_handler else []
    received = Received()
    sent = [_ct() for _ in range(3)]
    with _listener(received, *extra) as (ae, port):
        assoc = associate(ct_requestor(), "127.0.0.1", port, ae_title="AINODE")
        assert assoc.is_established
        assert [assoc.send_c_store(ds).Status for ds in sent] == [0, 0, 0]
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        wait_until(lambda: not ae.active_associations, 10, message="acceptor ended")
    assert received.data_sets == [encode(ds, False, True) for ds in sent]
    listener_pdata = sum(isinstance(pdu, P_DATA_TF) for pdu in seen)
    if pdu_handler:
        assert listener_pdata >= 3 * 3  # every P-DATA-TF decoded by pynetdicom
    else:
        # The requestor's own decodes only: the echo's and three stores' responses.
        assert generic_decodes[0] == 4


@pytest.fixture(autouse=True)
def _pynetdicom_info_off(caplog: Any) -> None:
    """The node's default: pynetdicom's INFO lines off, so its logging handlers unbound."""
    caplog.set_level(logging.WARNING, logger="pynetdicom")


def _malformed_outcome(direct: bool) -> bool:
    """A P-DATA-TF whose item runs past the PDU: whether the listener aborted."""
    handlers = [] if direct else [(evt.EVT_PDU_RECV, lambda event: None)]
    received = Received()
    with _listener(received, *handlers) as (ae, port):
        assoc = associate(ct_requestor(), "127.0.0.1", port, ae_title="AINODE")
        assert assoc.is_established
        bad = bytearray(_encoded([(1, b"\x03abcd")]))
        bad[6:10] = struct.pack(">L", 50)
        assoc.dul.socket.send(bytes(bad))
        wait_until(lambda: not assoc.is_established, 10, message="association ended")
        aborted = assoc.is_aborted
        wait_until(lambda: not ae.active_associations, 10, message="acceptor ended")
    return aborted


def test_a_malformed_pdu_ends_the_association_as_pynetdicom_would() -> None:
    assert _malformed_outcome(direct=True) is _malformed_outcome(direct=False) is True
