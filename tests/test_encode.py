"""The node's DICOM writer (node.results.encode) gives pydicom's bytes, faster.

Every shipped result kind is compared in tests/test_conformance.py (``_node_file``);
here: a 150-entry Image Library SR against pydicom and its speed, odd values
(hypothesis: text in the declared character sets, empty values, odd lengths, defined
and undefined lengths, nested items), data sets read back from files (raw elements),
and the objects it leaves to pydicom.
"""

from __future__ import annotations

import copy
from io import BytesIO

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from node.contract.assemble import assemble_volume
from node.results import build_results, load_template_by_name
from node.results.encode import encode_body, encode_file, write_file
from tests.test_results import lung_prediction
from tools.synthetic.chest_ct import make_chest_ct

#: pydicom warns about the invalid values hypothesis makes up; the bytes must still agree.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _pydicom(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, copy.deepcopy(dataset), enforce_file_format=True)
    return buffer.getvalue()


def _file(dataset: Dataset, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = syntax
    return dataset


def _assert_same(dataset: Dataset) -> None:
    expected = _pydicom(dataset)
    assert encode_file(copy.deepcopy(dataset)) == expected
    handle = BytesIO()
    assert write_file(copy.deepcopy(dataset), handle) == len(expected)
    assert handle.getvalue() == expected


# -- hypothesis: odd values ------------------------------------------------------------

#: (Specific Character Set, characters its first encoding holds)
CHARSETS = [
    (None, st.characters(min_codepoint=32, max_codepoint=126)),
    ("ISO_IR 100", st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\\")),
    ("ISO_IR 192", st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_characters="\\")),
    ("ISO_IR 144", st.sampled_from(list("abc Здравствуйте"))),
    ("GB18030", st.sampled_from(list("abc 中文测试"))),
    # ISO 2022 with escape sequences: left to pydicom element by element.
    (["", "ISO 2022 IR 87"], st.sampled_from(list("abc 山田太郎"))),
    (["ISO 2022 IR 6", "ISO 2022 IR 100"], st.sampled_from(list("abc äöü"))),
]


@st.composite
def _text(draw: st.DrawFn, alphabet: st.SearchStrategy[str], max_size: int = 9) -> str:
    return draw(st.text(alphabet=alphabet, max_size=max_size))


_ascii = st.text(
    alphabet=st.characters(min_codepoint=48, max_codepoint=90, exclude_characters="\\"),
    max_size=9,
)
_uid = st.lists(st.integers(0, 99999), min_size=2, max_size=6).map(
    lambda parts: ".".join(str(p) for p in parts)
)


@st.composite
def _item(draw: st.DrawFn, letters: st.SearchStrategy[str], depth: int) -> Dataset:
    item = Dataset()
    text = _text(letters)
    if draw(st.booleans()):
        item.CodeMeaning = draw(text)  # LO
    if draw(st.booleans()):
        item.TextValue = draw(_text(letters, 70))  # UT
    if draw(st.booleans()):
        item.ContentLabel = draw(_ascii.map(str.upper))  # CS
    if draw(st.booleans()):
        item.ReferencedSOPInstanceUID = draw(_uid)  # UI, odd and even lengths
    if draw(st.booleans()):
        item.ReferencedFrameNumber = draw(st.lists(st.integers(1, 9999), max_size=3))  # IS
    if draw(st.booleans()):
        item.PixelSpacing = draw(  # DS, multi-valued
            st.lists(st.floats(0.001, 1000, allow_nan=False), min_size=0, max_size=2).map(
                lambda values: [f"{v:.6g}" for v in values]
            )
        )
    if draw(st.booleans()):
        item.NumericValue = draw(st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: f"{v:.8g}"))
    if draw(st.booleans()):
        item.FloatingPointValue = draw(st.floats(allow_nan=False))  # FD
    if draw(st.booleans()):
        item.Rows = draw(st.integers(0, 65535))  # US
    if draw(st.booleans()):
        item.ReferencedSegmentNumber = draw(st.lists(st.integers(0, 65535), max_size=4))
    if draw(st.booleans()):
        item.RelationshipType = draw(st.sampled_from(["", "CONTAINS", "HAS PROPERTIES"]))
    if draw(st.booleans()):
        item.PersonName = draw(text)  # (0040,A123) PN: pydicom's own path
    if draw(st.booleans()):
        item.ContentDate = draw(st.sampled_from(["", "20261204", "2026"]))
    if draw(st.booleans()):
        item.add_new(0x00420011, "OB", draw(st.binary(max_size=7)))  # odd lengths padded
    if depth > 0 and draw(st.booleans()):
        children = draw(st.lists(_item(letters, depth - 1), max_size=3))
        item.ContentSequence = Sequence(children)
        item["ContentSequence"].is_undefined_length = draw(st.booleans())
        for child in children:
            child.is_undefined_length_sequence_item = draw(st.booleans())
    return item


@st.composite
def _datasets(draw: st.DrawFn) -> Dataset:
    charset, letters = draw(st.sampled_from(CHARSETS))
    dataset = Dataset()
    if charset is not None:
        dataset.SpecificCharacterSet = charset
    dataset.PatientName = draw(_text(letters))
    dataset.PatientID = draw(_ascii)
    dataset.SeriesDescription = draw(_text(letters, 64))
    dataset.StudyDescription = draw(st.sampled_from(["", "A", "AB"]))
    root = draw(_item(letters, 3))
    dataset.ContentSequence = Sequence([root])
    if draw(st.booleans()):  # an item with a character set of its own
        other, other_letters = draw(st.sampled_from(CHARSETS))
        nested = draw(_item(other_letters, 1))
        if other is not None:
            nested.SpecificCharacterSet = other
        dataset.ContentSequence.append(nested)
    return _file(dataset)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(_datasets())
def test_odd_values_give_pydicoms_bytes(dataset: Dataset) -> None:
    _assert_same(dataset)


# -- read from files, other encodings --------------------------------------------------


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPGExtended.dcm"])
def test_data_sets_read_from_files_give_pydicoms_bytes(name: str) -> None:
    """Raw elements kept as read (explicit VR little endian), converted ones (implicit VR
    read, written explicit) and another transfer syntax (left to pydicom)."""
    dataset = pydicom.dcmread(get_testdata_file(name))
    _assert_same(dataset)
    if dataset.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian:
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        _assert_same(dataset)


def test_pixel_data_of_ob_or_ow_is_corrected_as_pydicom_does() -> None:
    for bits in (1, 8, 16):
        dataset = _file(Dataset())
        dataset.BitsAllocated = bits
        dataset.add_new(0x7FE00010, "OB or OW", b"\x01\x02\x03")
        assert encode_body(copy.deepcopy(dataset)) is not None
        _assert_same(dataset)


@pytest.mark.parametrize("representation", [0, 1, None])
def test_us_or_ss_is_corrected_against_the_parents_as_pydicom_does(
    representation: int | None,
) -> None:
    """A Label Map SEG's palette descriptors; a nested item's value (Pixel Representation
    in the root)."""
    dataset = _file(Dataset())
    if representation is not None:
        dataset.PixelRepresentation = representation
    dataset.add_new(0x00281101, "US or SS", [256, 0, 16])
    item = Dataset()
    item.add_new(0x00280106, "US or SS", 5)  # Smallest Image Pixel Value
    dataset.add_new(0x00081115, "SQ", Sequence([item]))
    assert encode_body(copy.deepcopy(dataset)) is not None
    _assert_same(dataset)


def test_ambiguous_vrs_and_other_syntaxes_are_left_to_pydicom() -> None:
    unresolved = _file(Dataset())
    unresolved.add_new(0x00091010, "US or SS", 5)  # a private tag: pydicom cannot tell
    assert encode_body(copy.deepcopy(unresolved)) is None
    for dataset in (unresolved, copy.deepcopy(unresolved)):
        with pytest.raises(ValueError, match="ambiguous VR"):  # pydicom's own error
            (encode_file if dataset is unresolved else _pydicom)(dataset)
    lut = _file(Dataset())
    lut.add_new(0x00283006, "US or OW", b"\x00\x01")  # LUT Data without its descriptor
    for write in (encode_file, _pydicom):
        with pytest.raises(AttributeError, match="LUTDescriptor"):
            write(copy.deepcopy(lut))
    implicit = _file(Dataset(), ImplicitVRLittleEndian)
    implicit.PatientName = "Doe^Jane"
    _assert_same(implicit)


def test_a_value_too_long_for_a_short_length_is_written_as_pydicom_does() -> None:
    dataset = _file(Dataset())
    dataset.add_new(0x00081030, "LO", "x" * 70_001)  # pydicom warns and writes it as UN
    with pytest.warns(UserWarning):
        expected = _pydicom(dataset)
    with pytest.warns(UserWarning):
        assert encode_file(dataset) == expected


# -- the SR the node builds: an Image Library of 300 entries ---------------------------


def test_a_150_slice_sr_is_written_with_pydicoms_bytes() -> None:
    # Its speed against pydicom is measured by `python -m benchmarks --only encoding`.
    datasets, truth = make_chest_ct(n_slices=150, rows=24, columns=24, pixel_spacing_mm=14.0)
    volume = assemble_volume(datasets)
    results = build_results(
        volume, lung_prediction(volume, truth), load_template_by_name("ct_lungs")
    )
    sr = results.sr
    assert encode_body(sr) is not None  # taken by the one-pass writer, not handed to dcmwrite
    encoded = encode_file(sr)
    assert encoded == _pydicom(sr)
    assert len(encoded) > 100_000  # the Image Library of 150 entries, a position each
