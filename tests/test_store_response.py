"""C-STORE responses packed with struct: pynetdicom's bytes, sent on the listener's path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from benchmarks.ct_series import write_ct_series
from node.config import NodeSettings
from node.dicom import status
from node.dicom.scp import StorageSCP
from node.dicom.store_response import _plain_store_response, encode_store_response
from node.orchestration.ingest import Ingestor
from node.spool import Spool
from node.state.series import SeriesStore
from tests.support.dcmtk import storescu
from tests.support.net import free_port
from tests.support.scu import associate


def _response(sop_class: str, message_id: int, code: int, sop_uid: str) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageID = message_id
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_uid
    rsp.Status = code
    return rsp


@pytest.mark.parametrize(
    ("sop_class", "message_id", "code", "sop_uid"),
    [
        (CTImageStorage, 1, 0x0000, "1.2.826.0.1.3680043.8.498.12345"),  # odd length
        (CTImageStorage, 65535, 0xA700, "1.2.826.0.1.3680043.8.498.123456"),  # even
        ("1.2.840.10008.5.1.4.1.1.88.33", 7, 0xC002, "1.2.3"),
        ("1.2.840.10008.5.1.4.1.1.4", 300, 0xB000, "1." + "2" * 62),  # 64 characters
    ],
)
def test_the_packed_command_set_is_what_pynetdicom_encodes(
    sop_class: str, message_id: int, code: int, sop_uid: str
) -> None:
    message = C_STORE_RSP()
    message.primitive_to_message(_response(sop_class, message_id, code, sop_uid))
    expected = encode(message.command_set, True, True)
    assert encode_store_response(sop_class, message_id, code, sop_uid) == expected


def test_only_a_plain_response_takes_the_packed_path() -> None:
    plain = _response(CTImageStorage, 1, 0x0000, "1.2.3")
    assert _plain_store_response(plain)
    commented = _response(CTImageStorage, 1, 0xC000, "1.2.3")
    commented.ErrorComment = "cannot understand"
    assert not _plain_store_response(commented)
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = "1.2.3"
    assert not _plain_store_response(request)


def test_the_listener_answers_stores_without_pynetdicoms_encoder(
    tmp_path: Path, database: Any, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Success and a refusal reach a pynetdicom SCU and dcmtk's storescu, packed by the
    node (pynetdicom's C-STORE-RSP encoder is never called); the files stored are the
    sent data sets byte for byte."""
    generic: list[int] = []
    original = C_STORE_RSP.encode_msg

    def counted(self: C_STORE_RSP, *args: Any) -> Any:
        generic.append(1)
        return original(self, *args)

    monkeypatch.setattr(C_STORE_RSP, "encode_msg", counted)
    settings = NodeSettings(ae_title="AINODE", dicom_port=free_port(), bind_address="127.0.0.1")
    spool = Spool(tmp_path / "spool")
    scp = StorageSCP(settings, Ingestor(spool, SeriesStore(database), clock=clock))
    scp.start()
    _, files = write_ct_series(tmp_path / "sent", 4, rows=16, columns=16)
    try:
        storescu(settings.dicom_port, files[:2])
        sender = AE(ae_title="SCU")
        sender.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        received: list[Any] = []  # the response command sets as the SCU decoded them
        assoc = associate(
            sender,
            "127.0.0.1",
            settings.dicom_port,
            ae_title="AINODE",
            evt_handlers=[(evt.EVT_DIMSE_RECV, lambda event: received.append(event.message))],
        )
        assert assoc.is_established
        try:
            good = pydicom.dcmread(files[2])
            rsp = assoc.send_c_store(good, msg_id=7)
            assert rsp.Status == status.SUCCESS
            bad = pydicom.dcmread(files[3])
            bad.SeriesInstanceUID = "1..2"  # malformed: refused, nothing stored
            rsp = assoc.send_c_store(bad, msg_id=8)
            assert rsp.Status == status.MISSING_IDENTIFIER
        finally:
            assoc.release()
        commands = [message.command_set for message in received]
        assert [(c.MessageIDBeingRespondedTo, c.Status) for c in commands] == [
            (7, status.SUCCESS),
            (8, status.MISSING_IDENTIFIER),
        ]
        assert [c.AffectedSOPInstanceUID for c in commands] == [
            good.SOPInstanceUID,
            bad.SOPInstanceUID,
        ]
        assert {c.AffectedSOPClassUID for c in commands} == {CTImageStorage}
    finally:
        scp.stop()
    assert generic == []
    stored = {path.stem: path for path in (tmp_path / "spool").rglob("*.dcm")}
    assert len(stored) == 3  # not the refused one
    for sent in files[:3]:
        uid = pydicom.dcmread(sent, stop_before_pixels=True).SOPInstanceUID
        sent_bytes, got = sent.read_bytes(), stored[uid].read_bytes()
        # Same data set after each file's header (storescu sends the file's data set).
        assert got.endswith(sent_bytes[-(len(sent_bytes) - _header_length(sent_bytes)) :])


def _header_length(data: bytes) -> int:
    """Preamble, ``DICM`` and the File Meta group (its group length element's value)."""
    return 132 + 12 + int.from_bytes(data[140:144], "little")
