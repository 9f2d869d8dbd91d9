"""Property-based tests (hypothesis) of what hostile input reaches first (issue 13).

* header parsing at receive (:func:`node.dicomweb.receive.identify`, the checks the C-STORE
  handler makes): any data set either yields identifiers that are valid UIDs or raises
  :class:`~node.dicomweb.receive.InstanceRejected` with a DIMSE failure status;
* rule evaluation (:mod:`node.routing`): any ``match`` mapping either parses or raises
  ``ValueError``; parsed rules evaluate any header values without raising;
* volume assembly (:func:`node.contract.assemble.assemble_volume`): any slice order and
  positions either assemble sorted with the spacing given, or raise ``VolumeError``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from node.contract.assemble import assemble_volume
from node.contract.volume import SPACING_TOLERANCE
from node.dicom import status
from node.dicomweb.receive import InstanceRejected, identify
from node.errors import VolumeError
from node.routing import HeaderSubject, MappingSubject, evaluate, parse_conditions
from node.spool import is_valid_uid
from tools.synthetic.instance import new_instance, set_grayscale_pixels

#: pydicom warns about every invalid value hypothesis makes up; that is the point.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- header parsing -----------------------------------------------------------------------

uid_like = st.one_of(
    st.none(),
    st.text(alphabet="0123456789.", max_size=70),
    st.text(max_size=70),
    st.sampled_from(["../..", "1.2.3/../4", "1.2.ab", "1." + "2" * 80, "", " 1.2.3 "]),
)


@st.composite
def headers(draw: st.DrawFn) -> tuple[Dataset, str]:
    dataset = Dataset()
    for keyword in ("SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID"):
        value = draw(uid_like)
        if value is not None:
            setattr(dataset, keyword, value)
    if draw(st.booleans()):
        dataset.Modality = draw(st.text(max_size=20))
    if draw(st.booleans()):
        dataset.Rows = draw(st.integers(0, 64))
        dataset.Columns = draw(st.integers(0, 64))
        dataset.BitsAllocated = draw(st.sampled_from([1, 8, 12, 16, 32]))
        dataset.SamplesPerPixel = draw(st.sampled_from([1, 3]))
        dataset.PhotometricInterpretation = draw(st.sampled_from(["MONOCHROME2", "RGB"]))
        if draw(st.booleans()):
            dataset.NumberOfFrames = draw(st.integers(1, 4))
        dataset.PixelData = draw(st.binary(max_size=2 * 64 * 64 + 8))
    syntax = draw(st.sampled_from([str(ExplicitVRLittleEndian), str(RLELossless), ""]))
    return dataset, syntax


@FAST
@given(headers())
def test_identify_accepts_valid_identifiers_or_refuses_with_a_status(
    case: tuple[Dataset, str],
) -> None:
    dataset, syntax = case
    try:
        found = identify(dataset, transfer_syntax=syntax)
    except InstanceRejected as exc:
        assert exc.code in {
            status.CANNOT_UNDERSTAND,
            status.MISSING_IDENTIFIER,
            status.PIXEL_DATA_MISMATCH,
        }
        assert str(exc)
        return
    for uid in (found.sop_uid, found.series_uid, found.study_uid, found.sop_class_uid):
        assert is_valid_uid(uid)
        assert "/" not in uid and ".." not in uid.split(".")  # safe as a spool path part
    assert found.transfer_syntax == syntax


# -- rule evaluation ----------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
values = st.one_of(scalars, st.lists(scalars, max_size=4))
keys = st.sampled_from(
    ["Modality", "SeriesDescription", "SliceThickness", "SOPClassUID", "calling_ae", "Rows"]
)
operators = st.sampled_from(
    ["equals", "regex", "in", "range", "lt", "le", "gt", "ge", "contains", "exists", "not", "x"]
)
operands = st.recursive(
    values,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(operators, inner, max_size=2)
    ),
    max_leaves=6,
)
specs = st.dictionaries(
    st.one_of(keys, st.sampled_from(["all", "any", "not"])),
    st.one_of(
        operands,
        st.dictionaries(operators, operands, max_size=2),
        st.lists(st.dictionaries(keys, operands, max_size=2), max_size=2),
    ),
    max_size=3,
)


@FAST
@given(specs, st.dictionaries(keys, values, max_size=6))
def test_rules_parse_or_name_the_error_and_never_raise_on_headers(
    match: dict[str, object], header: dict[str, object]
) -> None:
    try:
        conditions = parse_conditions(match)
    except ValueError as exc:
        assert str(exc).startswith("match")
        return
    result = evaluate("r", conditions, MappingSubject(header))
    assert result.matched == (not result.failed)
    # The same header as a pydicom data set (only the values pydicom takes as text).
    dataset = Dataset()
    for key, value in header.items():
        if key != "calling_ae" and isinstance(value, str) and value.isprintable():
            try:
                setattr(dataset, key, value)
            except (TypeError, ValueError, OverflowError):
                continue
    evaluate("r", conditions, HeaderSubject(dataset, calling_ae="ANY"))


# -- volume assembly ----------------------------------------------------------------------


def slice_at(z: float, number: int, value: int, rows: int = 4) -> Dataset:
    ds = new_instance("1.2.840.10008.5.1.4.1.1.2", f"1.2.826.0.1.3680043.8.498.99.{number}")
    ds.Modality = "CT"
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 1.0
    set_grayscale_pixels(ds, np.full((rows, 4), value, dtype=np.int16), bits_stored=12)
    return ds


@FAST
@given(
    st.integers(1, 12),
    st.floats(0.2, 10.0),
    st.floats(-500.0, 500.0),
    st.randoms(use_true_random=False),
    st.lists(st.floats(-20.0, 20.0), max_size=3),
    st.booleans(),
)
def test_volume_is_sorted_with_the_given_spacing_or_rejected(
    count: int,
    spacing: float,
    start: float,
    rng: object,
    extra: list[float],
    odd_size: bool,
) -> None:
    positions = [start + i * spacing for i in range(count)] + extra
    slices = [slice_at(z, i, i) for i, z in enumerate(positions)]
    if odd_size and len(slices) > 1:
        slices[-1] = slice_at(positions[-1], len(slices) - 1, len(slices) - 1, rows=5)
    rng.shuffle(slices)  # type: ignore[attr-defined]
    try:
        volume = assemble_volume(slices)
    except VolumeError as exc:
        assert str(exc)
        return
    zs = [float(ds.ImagePositionPatient[2]) for ds in volume.datasets]
    assert zs == sorted(zs)
    assert volume.shape[0] == len(slices)
    # Each slice's pixels (its index) follow it: the array is stacked in the sorted order.
    numbers = [int(str(ds.SOPInstanceUID).rsplit(".", 1)[1]) for ds in volume.datasets]
    assert [int(v) for v in volume.array[:, 0, 0]] == numbers
    if len(zs) > 1:
        steps = np.diff(zs)
        assert np.all(np.abs(steps - volume.spacing[0]) <= SPACING_TOLERANCE * volume.spacing[0])
        if not extra:
            assert volume.spacing[0] == np.float64(np.median(steps))
            assert abs(volume.spacing[0] - spacing) < 1e-6 * max(1.0, abs(start))
    assert volume.spacing[1:] == (0.5, 0.5)


# -- the two defects the hostile cases found ----------------------------------------------


def test_a_sheared_series_is_rejected_naming_the_drift_and_the_tilt() -> None:
    """Gantry tilt: axial IOP, positions drifting along y. It used to be stacked as if
    axial (every voxel misplaced by up to the drift) and processed."""
    slices = [slice_at(3.0 * i, i, i) for i in range(10)]
    for ds in slices:
        z = float(ds.ImagePositionPatient[2])
        ds.ImagePositionPatient = [0.0, z * np.tan(np.radians(15)), z]
        ds.GantryDetectorTilt = 15
    try:
        assemble_volume(slices)
    except VolumeError as exc:
        assert "drift 7.23 mm in the image plane" in str(exc), exc
        assert "gantry tilt 15 degrees" in str(exc), exc
    else:
        raise AssertionError("a sheared series was assembled")
    # Rounding in the headers (far below half a pixel) is not a shear.
    for ds in slices:
        ds.ImagePositionPatient = [0.0001, 0.0002, float(ds.ImagePositionPatient[2])]
    assert assemble_volume(slices).shape == (10, 4, 4)


def test_an_image_without_pixel_data_is_refused_at_receive() -> None:
    """Rows and Columns without Pixel Data used to be answered 0x0000 and then failed its
    series at inference; ``identify`` (STOW-RS) and the C-STORE handler share the check."""
    ds = slice_at(0.0, 1, 1)
    ds.SeriesInstanceUID = ds.StudyInstanceUID = "1.2.3.4"
    del ds.PixelData
    for syntax in (str(ExplicitVRLittleEndian), str(RLELossless)):
        try:
            identify(ds, transfer_syntax=syntax)
        except InstanceRejected as exc:
            assert exc.code == status.PIXEL_DATA_MISMATCH
            assert "Rows and Columns without PixelData" in str(exc)
        else:
            raise AssertionError("an image without pixel data was accepted")
    del ds.Rows, ds.Columns  # not an image (an SR, a KO…): accepted
    assert identify(ds, transfer_syntax=str(ExplicitVRLittleEndian)).sop_uid
