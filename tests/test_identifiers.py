"""The receive-time scan of a data set: pydicom's values and verdicts, or a decline."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.events import Event

from benchmarks.ct_series import write_ct_series
from node.config import NodeSettings
from node.dicom.identifiers import scan
from node.dicom.scp import StorageSCP
from node.orchestration.ingest import Ingestor
from node.pixel_length import pixel_data_problem
from node.spool import Spool
from node.state.series import SeriesStore
from tests.support.dcmtk import storescu
from tests.support.net import free_port

KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
)


def _image(**changes: Any) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.22"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.333"
    ds.Modality = "CT"
    ds.PatientName = "Müller^Jürgen"
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    inner = Dataset()
    inner.CodeValue = "T-D3000"
    item.ConceptNameCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item, Dataset()])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 4
    ds.Columns = 6
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(48)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    if "PixelData" in ds:
        ds["PixelData"].VR = "OW"  # not ambiguous, whatever the description says
    return ds


def _encoded(ds: Dataset, syntax: str) -> bytes:
    out = DicomBytesIO()
    out.is_implicit_VR = syntax == ImplicitVRLittleEndian
    out.is_little_endian = True
    write_dataset(out, ds)
    return out.getvalue()


CASES = {
    "ct": {},
    "no pixels": {"PixelData": None},
    "no image": {"PixelData": None, "Rows": None, "Columns": None},
    "short pixels": {"PixelData": bytes(46)},
    "extra frame": {"PixelData": bytes(96)},
    "padding byte": {"PixelData": bytes(49)},
    "frames": {"NumberOfFrames": "2", "PixelData": bytes(96)},
    "no bits": {"BitsAllocated": None},
    "ybr": {
        "PhotometricInterpretation": "YBR_FULL_422",
        "SamplesPerPixel": 3,
        "BitsAllocated": 8,
        "PixelData": bytes(48),
    },
    "float": {"PixelData": None, "FloatPixelData": bytes(96), "BitsAllocated": 32},
    "float bits": {"PixelData": None, "FloatPixelData": bytes(48)},
    "no modality": {"Modality": None},
    "bad uid": {"SeriesInstanceUID": "1..2"},
    "odd uid": {"SOPInstanceUID": "1.2.826.0.1.3680043.8.498.12"},  # padded with a null
    "odd modality": {"Modality": "MRI"},  # padded with a space (not a real modality)
    "spaced frames": {"NumberOfFrames": " 2 ", "PixelData": bytes(96)},
    "empty frames": {"NumberOfFrames": ""},
    "empty modality": {"Modality": ""},
}


def _undefined_lengths(ds: Dataset) -> Dataset:
    """Every sequence and item of ``ds`` written with undefined length (delimiters)."""
    for element in ds:
        if element.VR == "SQ":
            element.is_undefined_length = True
            for item in element.value:
                item.is_undefined_length_sequence_item = True
                _undefined_lengths(item)
    return ds


@pytest.mark.parametrize("undefined", [False, True], ids=["defined", "undefined"])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_scan_reads_what_pydicom_reads(case: str, syntax: str, undefined: bool) -> None:
    ds = _image(**CASES[case])
    encoded = _encoded(_undefined_lengths(ds) if undefined else ds, syntax)
    assert (b"\xff\xff\xff\xff" in encoded) is undefined
    scanned = scan(encoded, syntax)
    assert scanned is not None
    found, pixel_length = scanned
    whole = read_dataset(BytesIO(encoded), syntax == ImplicitVRLittleEndian, True)
    for keyword in KEYWORDS:
        assert found.get(keyword) == whole.get(keyword), keyword
    length = None if pixel_length < 0 else pixel_length
    assert _verdict(found, syntax, length) == _verdict(whole, syntax, None)


def _verdict(dataset: Dataset, syntax: str, length: int | None) -> str | None:
    """pixel_data_problem's answer, or the name of what it raised (the same either way:
    implicit VR pixel data without Bits Allocated is pydicom's AttributeError)."""
    try:
        return pixel_data_problem(dataset, syntax, pixel_length=length)
    except Exception as exc:
        return type(exc).__name__


def test_the_scan_finds_the_problems_pydicom_finds() -> None:
    """The verdicts above are not all 'fine': short, long and undescribed pixels."""
    verdicts = set()
    for case in CASES:
        scanned = scan(
            _encoded(_image(**CASES[case]), ExplicitVRLittleEndian), ExplicitVRLittleEndian
        )
        assert scanned is not None
        found, length = scanned
        problem = pixel_data_problem(
            found, ExplicitVRLittleEndian, pixel_length=None if length < 0 else length
        )
        verdicts.add(problem is None)
    assert verdicts == {True, False}


#: A private UN element of undefined length (implicit VR items inside explicit VR).
_UN_UNDEFINED = (
    b"\x09\x00\x10\x10UN\x00\x00\xff\xff\xff\xff"
    + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    + b"\x08\x00\x00\x01\x02\x00\x00\x00AB"
    + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
)


@pytest.mark.parametrize(
    ("encoded", "syntax"),
    [
        (_encoded(_image(), ExplicitVRLittleEndian), ExplicitVRBigEndian),  # another syntax
        (_encoded(_image(), ExplicitVRLittleEndian)[:-10], ExplicitVRLittleEndian),  # cut
        (_encoded(_image(), ImplicitVRLittleEndian)[:-50], ImplicitVRLittleEndian),
        (_encoded(_image(Modality="CTé"), ExplicitVRLittleEndian), ExplicitVRLittleEndian),
        (_encoded(_image(Modality=["CT", "PT"]), ExplicitVRLittleEndian), ExplicitVRLittleEndian),
        (b"\x08\x00\x18\x00ZZ", ExplicitVRLittleEndian),  # a header cut short
        (b"\x08\x00\x18\x00\x00\x00", ImplicitVRLittleEndian),
        (b"\x08\x00\x18\x00u1\x04\x001.2.", ExplicitVRLittleEndian),  # not a VR
        (_UN_UNDEFINED + _encoded(_image(), ExplicitVRLittleEndian), ExplicitVRLittleEndian),
    ],
)
def test_the_scan_declines_what_it_cannot_read_with_certainty(encoded: bytes, syntax: str) -> None:
    assert scan(encoded, syntax) is None


def test_two_pixel_data_elements_are_left_to_pydicom() -> None:
    encoded = _encoded(_image(FloatPixelData=bytes(96)), ExplicitVRLittleEndian)
    assert scan(encoded, ExplicitVRLittleEndian) is None


def test_the_listener_reads_identifiers_without_decoding_the_data_set(
    tmp_path: Path, database: Any, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """storescu's CT instances are stored (identifiers recorded) and pydicom's decode of
    the whole data set (``Event.dataset``) is never asked for."""
    decoded: list[int] = []
    original = Event._get_dataset

    def counted(self: Event, *args: Any) -> Any:
        decoded.append(1)
        return original(self, *args)

    monkeypatch.setattr(Event, "_get_dataset", counted)
    settings = NodeSettings(ae_title="AINODE", dicom_port=free_port(), bind_address="127.0.0.1")
    series = SeriesStore(database)
    scp = StorageSCP(settings, Ingestor(Spool(tmp_path / "spool"), series, clock=clock))
    scp.start()
    _, files = write_ct_series(tmp_path / "sent", 3, rows=16, columns=16)
    try:
        storescu(settings.dicom_port, files)
    finally:
        scp.stop()
    assert decoded == []
    for path in files:
        sent = pydicom.dcmread(path, stop_before_pixels=True)
        stored = series.stored_instance(sent.SOPInstanceUID)
        assert stored is not None and stored[0] == sent.SeriesInstanceUID
        sent_bytes = path.read_bytes()
        data_set = sent_bytes[144 + int.from_bytes(sent_bytes[140:144], "little") :]
        assert stored[1].read_bytes().endswith(data_set)  # byte for byte after the header
