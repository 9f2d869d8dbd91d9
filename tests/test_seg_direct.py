"""The BINARY SEG built directly (node/results/seg/direct.py) is highdicom's, byte for byte."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from benchmarks.ct_series import write_ct_series
from benchmarks.encoding import blob_label_map, write_template
from node.contract.assemble import assemble_volume
from node.contract.plugin import Prediction
from node.contract.volume import Volume
from node.results import build_results, load_template
from node.results.analysis import segment_boxes
from node.results.encode import encode_file
from node.results.identity import SeriesIdentity
from node.results.seg import direct, frames, segmentation
from node.results.seg.segmentation import build_seg
from node.results.source import buildable_volume
from tests.support.validators import dciodvfy_errors
from tests.test_seg_frames import (
    DIRECT_STREAMED,
    _align,
    _build_both,
    _dcmwrite,
    _streamed,
    _volume,
)


@pytest.fixture
def direct_builds(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each ``build_seg`` (fast) was built directly (True) or fell back (False)."""
    taken: list[bool] = []
    build = direct.build_direct_seg

    def counted(*args: Any, **kwargs: Any) -> Any:
        seg = build(*args, **kwargs)
        taken.append(seg is not None)
        return seg

    monkeypatch.setattr(segmentation, "build_direct_seg", counted)
    return taken


def _series(directory: Path, slices: int, size: int, edit: Any = None) -> list[Dataset]:
    _, paths = write_ct_series(directory / "ct", slices, rows=size, columns=size)
    datasets = [pydicom.dcmread(path) for path in paths]
    for index, dataset in enumerate(datasets):
        if edit is not None:
            edit(index, dataset)
    return datasets


def _flipped(index: int, dataset: Dataset) -> None:
    """Rows right to left and columns anterior to posterior, slices stacked downwards."""
    dataset.ImageOrientationPatient = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0]
    dataset.ImagePositionPatient = [179.2, 179.2, -2.5 * index]


def _optional(index: int, dataset: Dataset) -> None:
    """Optional Patient/Study/Series attributes and ISO_IR 100 text."""
    dataset.SpecificCharacterSet = "ISO_IR 100"
    dataset.PatientName = "Müller^Jürgen"
    dataset.PatientAge = "042Y"
    dataset.PatientWeight = "71.5"
    dataset.StudyDescription = "Thorax nativ für Lungen"
    dataset.Laterality = "R"
    dataset.Manufacturer = "Gerät GmbH"
    dataset.PatientBirthDate = "19820304"
    dataset.PatientSex = "M"
    dataset.AccessionNumber = "ACC123"
    dataset.SpacingBetweenSlices = "1.0"
    dataset.LossyImageCompression = "01"
    dataset.LossyImageCompressionRatio = "9.5"
    dataset.LossyImageCompressionMethod = "ISO_10918_1"


def _gap(index: int, dataset: Dataset) -> None:
    """Irregular spacing: a slice missing after the fourth (no spacing, no "3D")."""
    x, y, _ = dataset.ImagePositionPatient
    dataset.ImagePositionPatient = [x, y, float(index + (index >= 4))]


def _bare(index: int, dataset: Dataset) -> None:
    """No Referring Physician, Body Part, Manufacturer, Window or Slice Location."""
    for keyword in (
        "ReferringPhysicianName",
        "BodyPartExamined",
        "Manufacturer",
        "WindowCenter",
        "WindowWidth",
        "SliceLocation",
    ):
        if keyword in dataset:
            delattr(dataset, keyword)


def _assert_highdicoms(directory: Path, volume: Volume, labels: int, dicom: bool = True) -> Dataset:
    """The direct SEG of ``labels`` blobs on ``volume`` after checking it is highdicom's."""
    label_map = blob_label_map(volume.shape, labels)
    fast, reference = _build_both(directory, volume, labels, label_map)
    assert _streamed(fast) == DIRECT_STREAMED
    streamed = encode_file(fast)
    path = directory / "direct.dcm"
    path.write_bytes(streamed)
    _align(reference, fast)
    assert streamed == _dcmwrite(reference)
    assert streamed == _dcmwrite(fast)  # the in-memory object, its values made on access
    if dicom:
        assert dciodvfy_errors(path) == []
    # highdicom's frame queries on the built object answer as on its own construction.
    uids = [str(d.SOPInstanceUID) for d in volume.datasets]
    numbers = list(range(1, labels + 1))
    np.testing.assert_array_equal(
        fast.get_pixels_by_source_instance(uids, segment_numbers=numbers),
        reference.get_pixels_by_source_instance(uids, segment_numbers=numbers),
    )
    return fast


@pytest.mark.parametrize("labels", [1, 3])
@pytest.mark.parametrize(
    "case",
    ["axial", "long small grid", "flipped", "turned", "oblique", "unsorted", "optional", "gap"],
)
def test_direct_seg_is_highdicoms_construction(
    tmp_path: Path, direct_builds: list[bool], case: str, labels: int
) -> None:
    if case == "long small grid":
        volume = _volume(tmp_path, slices=150, size=8)
    elif case in ("turned", "oblique"):
        volume = _volume(
            tmp_path,
            slices=10,
            size=16,
            turn=30.0 if case == "turned" else 0.0,
            tilt=25.0 if case == "oblique" else 0.0,
        )
    elif case == "flipped":
        volume = buildable_volume(assemble_volume(_series(tmp_path, 7, 16, _flipped)))
    elif case == "optional":
        volume = buildable_volume(assemble_volume(_series(tmp_path, 6, 16, _optional)))
    elif case == "gap":  # the node refuses such a series; highdicom's SEG takes it
        volume = _volume(tmp_path, slices=8, size=16)
        headers = [pydicom.Dataset(d) for d in volume.datasets]
        for index, header in enumerate(headers):
            _gap(index, header)
        volume = dataclasses.replace(volume, datasets=tuple(headers))
    elif case == "unsorted":  # sources not in the order of their positions
        volume = _volume(tmp_path, slices=9, size=16)
        order = [4, 0, 8, 2, 6, 1, 7, 3, 5]
        volume = dataclasses.replace(
            volume,
            array=volume.array[order],
            datasets=tuple(volume.datasets[i] for i in order),
        )
    else:
        volume = _volume(tmp_path, slices=12, size=24)
    seg = _assert_highdicoms(tmp_path, volume, labels, dicom=case in ("axial", "flipped"))
    assert direct_builds == [True]
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    # Both depend on a regular spacing; "3D" on one segment too (highdicom's rules).
    assert ("SpacingBetweenSlices" in measures) == (case != "gap")
    assert ("DimensionOrganizationType" in seg) == (case != "gap" and labels == 1)


def test_direct_seg_without_optional_source_attributes(
    tmp_path: Path, direct_builds: list[bool]
) -> None:
    volume = buildable_volume(assemble_volume(_series(tmp_path, 5, 16, _bare)))
    _assert_highdicoms(tmp_path, volume, 2, dicom=False)
    assert direct_builds == [True]


def test_direct_seg_one_slice(tmp_path: Path, direct_builds: list[bool]) -> None:
    """One plane: no spacing between slices, no "3D" organization."""
    volume = _volume(tmp_path, slices=1, size=16)
    _assert_highdicoms(tmp_path, volume, 1, dicom=False)
    assert direct_builds == [True]


@pytest.mark.parametrize("labels", [1, 3])
def test_outside_the_direct_case_the_seg_is_still_highdicoms(
    tmp_path: Path, direct_builds: list[bool], monkeypatch: pytest.MonkeyPatch, labels: int
) -> None:
    """Another highdicom version falls back to the constructor: the same object."""
    monkeypatch.setattr(hd, "__version__", "0.29.0")
    volume = _volume(tmp_path, slices=6, size=16)
    label_map = blob_label_map(volume.shape, labels)
    fast, reference = _build_both(tmp_path, volume, labels, label_map)
    assert direct_builds == [False]
    streamed = encode_file(fast)
    _align(reference, fast)
    assert streamed == _dcmwrite(reference)


def test_direct_seg_declines_what_it_does_not_reproduce(tmp_path: Path) -> None:
    volume = _volume(tmp_path, slices=4, size=16)
    label_map = blob_label_map(volume.shape, 2)
    descriptions = [object()]  # never reached: each case declines first
    arguments = {"segmentation_type": "BINARY", "omit_empty_frames": False}
    build = direct.build_direct_seg
    assert build(volume, label_map, descriptions, {**arguments, "workers": 2}) is None  # type: ignore[arg-type]
    assert build(volume, label_map, descriptions, {**arguments, "omit_empty_frames": True}) is None  # type: ignore[arg-type]
    fractional = {**arguments, "segmentation_type": "FRACTIONAL"}
    assert build(volume, label_map, descriptions, fractional) is None  # type: ignore[arg-type]
    turned = [pydicom.Dataset(d) for d in volume.datasets]  # one orientation differs
    turned[2].ImageOrientationPatient = [0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    other = dataclasses.replace(volume, datasets=tuple(turned))
    assert build(other, label_map, descriptions, arguments) is None  # type: ignore[arg-type]
    same = [pydicom.Dataset(d) for d in volume.datasets]  # two planes at one position
    same[1].ImagePositionPatient = same[0].ImagePositionPatient
    duplicate = dataclasses.replace(volume, datasets=tuple(same))
    assert build(duplicate, label_map, descriptions, arguments) is None  # type: ignore[arg-type]
    for change in ("multi-frame", "no spacing", "other series", "no frame of reference"):
        edited = [pydicom.Dataset(d) for d in volume.datasets]
        if change == "multi-frame":
            edited[3].NumberOfFrames = 1
        elif change == "no spacing":
            del edited[0].PixelSpacing
        elif change == "other series":
            edited[1].SeriesInstanceUID = "2.25.9"
        else:
            for dataset in edited:
                del dataset.FrameOfReferenceUID
        other = dataclasses.replace(volume, datasets=tuple(edited))
        assert build(other, label_map, descriptions, arguments) is None, change  # type: ignore[arg-type]
    assert build(volume, label_map[:3], descriptions, arguments) is None  # type: ignore[arg-type]


def test_frames_packed_inside_the_analysis_boxes_are_highdicoms(tmp_path: Path) -> None:
    """The Analysis' bounding boxes bound the packing (few segments: otherwise the whole
    map is compared): the file is still highdicom's, and build_results hands them on."""
    volume = _volume(tmp_path, slices=12, size=32)
    label_map = np.zeros(volume.shape, dtype=np.uint8)
    label_map[2:5, 3:9, 17:30] = 1  # boxes narrower than the map, off byte boundaries
    label_map[7:11, 20:31, 1:6] = 2
    label_map[8, 22, 3] = 0
    boxes = segment_boxes(label_map, 3)  # segment 3 empty
    template = load_template(write_template(tmp_path, 3))
    series = SeriesIdentity.of(
        template, series_instance_uid="2.25.1", series_number=9001, series_description="AI SEG"
    )
    fast, reference = (
        build_seg(
            volume,
            Prediction(label_map=label_map),
            template,
            series=series,
            sop_instance_uid="2.25.2",
            revision=1,
            boxes=boxes if fast else None,
            fast=fast,
        )
        for fast in (True, False)
    )
    packed = fast._dict[0x7FE00010]._value  # not made (reading the element makes it)
    assert isinstance(packed, frames.PackedFrames) and packed.boxes() == boxes
    streamed = encode_file(fast)
    _align(reference, fast)
    assert streamed == _dcmwrite(reference)

    results = build_results(volume, Prediction(label_map=label_map), template, tags=["seg"])
    assert results.seg._dict[0x7FE00010]._value.boxes() == boxes


@pytest.mark.parametrize(
    ("slices", "view"),
    [
        ([3, 4, 5, 6], True),
        ([6, 5, 4], True),
        ([2, 1, 0], True),  # down to the first slice
        ([5], False),
        ([1, 3, 4], False),
        ([4, 3, 5], False),
    ],
)
def test_planes_are_views_where_consecutive(slices: list[int], view: bool) -> None:
    volume = np.arange(8 * 2 * 2).reshape(8, 2, 2)
    planes = frames._planes(volume, np.array(slices))
    np.testing.assert_array_equal(planes, volume[slices])
    assert np.shares_memory(planes, volume) == view


def test_direct_seg_pickles_and_copies_as_highdicoms(tmp_path: Path) -> None:
    """A pickled (another process) or deep-copied direct SEG is the same object."""
    volume = _volume(tmp_path, slices=5, size=16)
    label_map = blob_label_map(volume.shape, 3)
    fast, reference = _build_both(tmp_path, volume, 3, label_map)
    _align(reference, fast)
    expected = _dcmwrite(reference)
    assert _dcmwrite(pickle.loads(pickle.dumps(fast))) == expected
    assert encode_file(copy.deepcopy(fast)) == expected
