"""The numpy-packed BINARY SEG is the object highdicom's per-frame construction builds."""

from __future__ import annotations

import math
import tracemalloc
from io import BytesIO
from pathlib import Path

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
from node.results import analysis, build_results, load_template
from node.results.analysis import segment_numbers_map
from node.results.encode import Streamed, encode_file, write_file
from node.results.identity import SeriesIdentity
from node.results.seg import frames, segmentation
from node.results.seg.segmentation import build_seg
from node.results.source import buildable_volume
from tests.support.datasets import dataset_differences
from tests.support.validators import dciodvfy_errors

#: Differ between any two builds: creation times and highdicom's random organization UID
#: (checked by :func:`_one_organization`).
_PER_BUILD = {
    "InstanceCreationTime",
    "ContentTime",
    "ContributionDateTime",
    "DimensionOrganizationUID",
}


def _one_organization(seg: Dataset) -> bool:
    """The dimension indices name the SEG's own dimension organization."""
    uid = seg.DimensionOrganizationSequence[0].DimensionOrganizationUID
    return all(item.DimensionOrganizationUID == uid for item in seg.DimensionIndexSequence)


def _volume(
    directory: Path,
    slices: int,
    size: int,
    columns: int | None = None,
    *,
    turn: float = 0.0,
    tilt: float = 0.0,
) -> Volume:
    """A CT series; ``turn`` rotates its rows and columns in the axial plane, ``tilt``
    tips the planes about the patient's x axis (degrees; the slices stacked along the
    tilted normal, 1 mm apart)."""
    _, paths = write_ct_series(directory / "ct", slices, rows=size, columns=columns or size)
    datasets = [pydicom.dcmread(path) for path in paths]
    c, s = math.cos(math.radians(turn)), math.sin(math.radians(turn))
    ct, st = math.cos(math.radians(tilt)), math.sin(math.radians(tilt))
    for index, dataset in enumerate(datasets):
        if turn:
            dataset.ImageOrientationPatient = [c, s, 0.0, -s, c, 0.0]
        if tilt:
            dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, ct, st]
            x, y, _ = dataset.ImagePositionPatient
            dataset.ImagePositionPatient = [x, y - index * st, index * ct]
    return buildable_volume(assemble_volume(datasets))


def _streamed(seg: Dataset) -> list[str]:
    """Keywords of the top-level values still to be made when written (sorted)."""
    return sorted(e.keyword for e in seg._dict.values() if isinstance(e._value, Streamed))


#: What the direct build (node/results/seg/direct.py) leaves to be made when written.
DIRECT_STREAMED = sorted(
    [
        "PerFrameFunctionalGroupsSequence",
        "PixelData",
        "ReferencedSeriesSequence",
        "SourceImageSequence",
    ]
)


def _align(reference: Dataset, fast: Dataset) -> None:
    """Give ``reference`` the per-build values of ``fast`` (creation times, the UID)."""
    for tag in list(reference.keys()):
        element = reference[tag]
        if element.keyword in _PER_BUILD:
            element.value = fast[tag].value
        elif element.VR == "SQ":
            for mine, theirs in zip(element.value, fast[tag].value, strict=True):
                _align(mine, theirs)


def _dcmwrite(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def _build_both(
    directory: Path, volume: Volume, labels: int, label_map: np.ndarray
) -> tuple[Dataset, Dataset]:
    template = load_template(write_template(directory, labels))
    series = SeriesIdentity.of(
        template, series_instance_uid="2.25.1", series_number=9001, series_description="AI SEG"
    )
    built = [
        build_seg(
            volume,
            Prediction(label_map=label_map),
            template,
            series=series,
            sop_instance_uid="2.25.2",
            revision=1,
            fast=fast,
        )
        for fast in (True, False)
    ]
    return built[0], built[1]


@pytest.mark.parametrize("labels", [1, 5])
def test_fast_seg_equals_highdicoms_construction(tmp_path: Path, labels: int) -> None:
    volume = _volume(tmp_path, slices=12, size=32)
    label_map = blob_label_map(volume.shape, labels)
    label_map[label_map == labels] = 0  # one segment (with 5) or every frame (with 1) empty
    if labels == 1:
        label_map[3, 4:9, 5:7] = 1
    fast, reference = _build_both(tmp_path, volume, labels, label_map)

    assert frames.packable(volume, label_map)
    assert dataset_differences(fast, reference, _PER_BUILD) == []
    assert _one_organization(fast)
    assert int(fast.NumberOfFrames) == 12 * labels
    assert fast.PixelData == reference.PixelData
    # The in-memory object answers queries like highdicom's own.
    uids = [str(d.SOPInstanceUID) for d in volume.datasets]
    np.testing.assert_array_equal(
        fast.get_pixels_by_source_instance(uids, segment_numbers=list(range(1, labels + 1))),
        reference.get_pixels_by_source_instance(uids, segment_numbers=list(range(1, labels + 1))),
    )


def test_fast_seg_writes_and_reads_back_as_the_label_map(tmp_path: Path) -> None:
    volume = _volume(tmp_path, slices=9, size=24)
    label_map = blob_label_map(volume.shape, 8)
    fast, _ = _build_both(tmp_path, volume, 8, label_map)
    path = tmp_path / "seg.dcm"
    fast.save_as(path, enforce_file_format=True)

    read = hd.seg.segread(path)
    uids = [str(d.SOPInstanceUID) for d in volume.datasets]
    pixels = read.get_pixels_by_source_instance(uids, segment_numbers=list(range(1, 9)))
    for number in range(1, 9):
        np.testing.assert_array_equal(pixels[..., number - 1], label_map == number)
    assert int(read.NumberOfFrames) == 9 * 8  # empty frames kept


def test_frames_not_a_whole_number_of_bytes_go_through_highdicom(tmp_path: Path) -> None:
    volume = _volume(tmp_path, slices=4, size=5)  # 25 pixels a frame
    label_map = blob_label_map(volume.shape, 3)
    assert not frames.packable(volume, label_map)
    fast, reference = _build_both(tmp_path, volume, 3, label_map)
    assert dataset_differences(fast, reference, _PER_BUILD) == []


def test_segment_numbers_map_recodes_without_an_index_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = _volume(tmp_path, slices=16, size=64)
    template = load_template(write_template(tmp_path, 3))
    in_order = blob_label_map(volume.shape, 3)
    numbers = segment_numbers_map(Prediction(label_map=in_order), volume, template)
    assert numbers is in_order  # label values 1..N in template order: the map itself

    as_int16 = in_order.astype(np.int16)
    monkeypatch.setattr(analysis, "_LOOKUP_SLAB_BYTES", 64 * 64 * 8)  # one slice a time
    tracemalloc.start()
    recoded = segment_numbers_map(Prediction(label_map=as_int16), volume, template)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(recoded, in_order)
    # The uint8 result (half the int16 map), np.unique's check and one slice of intp
    # index; an int64 copy of the whole map alone is 4x.
    assert peak < 2 * as_int16.nbytes
    one = load_template(write_template(tmp_path, 1))
    mask = in_order > 0
    recoded = segment_numbers_map(Prediction(label_map=mask), volume, one)
    assert recoded.dtype == np.uint8
    np.testing.assert_array_equal(recoded, mask.astype(np.uint8))


@pytest.mark.parametrize(
    ("case", "labels"),
    [
        ("axial", 1),
        ("axial", 5),  # the last segment empty
        ("axial", frames.FIND_OBJECTS_SEGMENTS + 4),  # bounding boxes; the last empty
        ("odd frame bytes", 3),  # 12 x 6: 9 bytes a frame, rows not whole bytes, padded
        ("odd frame bytes", frames.FIND_OBJECTS_SEGMENTS + 1),  # and bounding boxes
        ("turned", 4),
        ("oblique", 4),
    ],
)
def test_streamed_seg_file_is_dcmwrite_of_highdicoms_construction(
    tmp_path: Path, case: str, labels: int
) -> None:
    if case == "odd frame bytes":
        volume = _volume(tmp_path, slices=6, size=12, columns=6)
    else:
        volume = _volume(
            tmp_path,
            slices=10,
            size=32,
            turn=30.0 if case == "turned" else 0.0,
            tilt=25.0 if case == "oblique" else 0.0,
        )
    label_map = blob_label_map(volume.shape, labels)
    if labels > 1:
        label_map[label_map == labels] = 0
    fast, reference = _build_both(tmp_path, volume, labels, label_map)

    expected_streamed = DIRECT_STREAMED
    assert _streamed(fast) == expected_streamed
    streamed = encode_file(fast)  # the worker's writer, values made while writing
    with (tmp_path / "written.dcm").open("wb") as handle:
        assert write_file(fast, handle) == len(streamed)
    assert (tmp_path / "written.dcm").read_bytes() == streamed
    assert _streamed(fast) == expected_streamed  # still not held
    # Byte for byte: pydicom's dcmwrite of highdicom's own construction…
    _align(reference, fast)
    assert streamed == _dcmwrite(reference)
    # …and of the in-memory object (its values made on access).
    assert streamed == _dcmwrite(fast)
    assert _streamed(fast) == []
    assert dciodvfy_errors(tmp_path / "written.dcm") == []


def test_streamed_seg_is_written_without_holding_its_pixel_data_or_items(tmp_path: Path) -> None:
    volume = _volume(tmp_path, slices=32, size=256)
    labels = 60
    label_map = blob_label_map(volume.shape, labels)
    template = load_template(write_template(tmp_path, labels))
    series = SeriesIdentity.of(
        template, series_instance_uid="2.25.1", series_number=9001, series_description="AI SEG"
    )
    pixel_data = labels * 32 * 256 * 256 // 8  # 7.5 x the uint8 label map
    path = tmp_path / "seg.dcm"

    def build() -> Dataset:
        return build_seg(
            volume,
            Prediction(label_map=label_map),
            template,
            series=series,
            sop_instance_uid="2.25.2",
            revision=1,
            segment_numbers=label_map,
        )

    with path.open("wb") as handle:  # once before: highdicom loads its tables once
        write_file(build(), handle)
    tracemalloc.start()
    with path.open("wb") as handle:
        written = write_file(build(), handle)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    assert written == path.stat().st_size > pixel_data
    # The old path held the whole Pixel Data and 1,920 per-frame item datasets.
    assert peak < 2 * label_map.nbytes, peak / label_map.nbytes
    read = hd.seg.segread(path)
    uids = [str(d.SOPInstanceUID) for d in volume.datasets]
    pixels = read.get_pixels_by_source_instance(uids, segment_numbers=[1, 30, labels])
    for index, number in enumerate((1, 30, labels)):
        np.testing.assert_array_equal(pixels[..., index], label_map == number)


def test_other_results_leave_the_seg_values_unmade(tmp_path: Path) -> None:
    """The SR, KO, GSPS and SC builders read the SEG's UIDs and segments, never its frames:
    after build_results the SEG still holds no Pixel Data or per-frame items."""
    volume = _volume(tmp_path, slices=8, size=32)
    template = load_template(write_template(tmp_path, 4))
    tags = ["seg", "sr", "gsps", "sc", "ko.gsps+sc+seg+sr"]
    results = build_results(
        volume, Prediction(label_map=blob_label_map(volume.shape, 4)), template, tags=tags
    )
    assert set(results.objects) == set(tags)
    assert _streamed(results.seg) == DIRECT_STREAMED


def test_plane_items_spliced_from_the_first_are_highdicoms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planes after the first get the first's Derivation Image bytes with their source's
    UID spliced in (odd and even UID lengths, slices given out of order): the file is
    still highdicom's, and every plane but the first took the splice."""
    _, paths = write_ct_series(tmp_path / "ct", 9, rows=16, columns=16)
    datasets = [pydicom.dcmread(path) for path in paths]
    for index, dataset in enumerate(datasets):
        dataset.SOPInstanceUID = f"2.25.{7 * 10**index + index}"  # lengths 6..14
    order = [4, 0, 8, 2, 6, 1, 7, 3, 5]
    volume = buildable_volume(assemble_volume([datasets[i] for i in order]))
    spliced: list[bool] = []
    plane = frames._UIDSplice.plane

    def counted(self: frames._UIDSplice, item: Dataset) -> tuple[bytes, bytes, bytes] | None:
        result = plane(self, item)
        spliced.append(result is not None)
        return result

    monkeypatch.setattr(frames._UIDSplice, "plane", counted)
    # The splice is the path after highdicom's one-segment build (the direct build's fallback).
    monkeypatch.setattr(segmentation, "build_direct_seg", lambda *args: None)
    label_map = blob_label_map(volume.shape, 3)
    fast, reference = _build_both(tmp_path, volume, 3, label_map)
    assert spliced == [True] * 8
    streamed = encode_file(fast)
    _align(reference, fast)
    assert streamed == _dcmwrite(reference)
