"""The test helpers that run dicom3tools read reports quoting non-UTF-8 text."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from tests.support.validators import dciodvfy_output, find_tool


def _latin1_file(path: Path) -> Path:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    with pytest.warns(UserWarning, match="exceeds the maximum length"):
        ds.StudyDescription = "Thorax \u00e9t\u00e9 " + "\u00fc" * 80  # too long for LO: quoted
    ds.Modality = "OT"
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dciodvfy_report_with_latin1_text_is_read(tmp_path: Path) -> None:
    try:
        find_tool("dciodvfy")
    except FileNotFoundError:
        pytest.skip("dciodvfy not installed")
    path = _latin1_file(tmp_path / "latin1.dcm")
    assert b"\xe9t\xe9" in path.read_bytes()  # the file really holds Latin-1 bytes
    report = dciodvfy_output(path)
    assert any("\ufffd" in line for line in report), report
