"""``uid_value``: a raw UI element converted to the element pydicom would make."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.contract.volume import uid_value

SOP_INSTANCE = BaseTag(0x00080018)


def _read_back(tmp_path: Path, value: bytes | str, implicit: bool) -> Dataset:
    """A file holding ``value`` as its SOP Instance UID, read back (its elements raw)."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.add(DataElement(SOP_INSTANCE, "UI", value, validation_mode=pydicom.config.IGNORE))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    path = tmp_path / "one.dcm"
    ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return pydicom.dcmread(path)


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("value", ["1.2.826.0.1.3680043.8.498.1", "1.2.3.4"])
def test_a_raw_uid_becomes_the_element_pydicom_makes(
    tmp_path: Path, value: str, implicit: bool
) -> None:
    mine = _read_back(tmp_path, value, implicit)
    theirs = _read_back(tmp_path, value, implicit)
    assert isinstance(mine._dict[SOP_INSTANCE], RawDataElement)
    assert uid_value(mine, SOP_INSTANCE) == value
    converted = mine._dict[SOP_INSTANCE]
    assert type(converted) is DataElement  # kept, as pydicom keeps what it converts
    reference = theirs[SOP_INSTANCE]
    assert vars(converted) == vars(reference)
    assert type(converted.value) is type(reference.value)
    assert uid_value(mine, SOP_INSTANCE) == value  # and read again from the element


def test_trailing_padding_is_dropped_as_pydicom_drops_it(tmp_path: Path) -> None:
    ds = _read_back(tmp_path, "1.2.3", implicit=False)
    raw = ds._dict[SOP_INSTANCE]
    ds._dict[SOP_INSTANCE] = raw._replace(value=b"1.2.3\x00 \x00", length=8)
    assert uid_value(ds, SOP_INSTANCE) == "1.2.3"


@pytest.mark.parametrize(
    "value", ["1.02.3", "1.2.3\\4.5", "x" * 70], ids=["leading zero", "two values", "long"]
)
def test_anything_but_one_valid_uid_goes_through_pydicom(tmp_path: Path, value: str) -> None:
    mine = _read_back(tmp_path, value, implicit=False)
    theirs = _read_back(tmp_path, value, implicit=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own warnings about the value
        assert uid_value(mine, SOP_INSTANCE) == str(theirs[SOP_INSTANCE].value)
        assert vars(mine._dict[SOP_INSTANCE]) == vars(theirs[SOP_INSTANCE])


def test_an_absent_uid_raises_as_pydicom_does() -> None:
    with pytest.raises(KeyError):
        uid_value(Dataset(), SOP_INSTANCE)
