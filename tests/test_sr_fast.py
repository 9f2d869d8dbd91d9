"""The SR built the fast way is the SR highdicom's constructor builds, byte for byte.

``build_sr`` adds the measurement groups after highdicom's SR constructor (and the
Image Library, tests/test_result_parts.py); ``splice_groups=False`` passes them through
the constructor. Both are built from the same inputs, a ct_lungs-like chest and a
100-label map, and compared element by element and as written files.
"""

from __future__ import annotations

import copy
import io
import pickle
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import Comprehensive3DSRStorage, ExplicitVRLittleEndian

from benchmarks.ct_series import write_ct_series
from benchmarks.encoding import blob_label_map, write_template
from node.contract.assemble import assemble_volume
from node.contract.plugin import Prediction
from node.contract.template import ResultTemplate, load_template, load_template_by_name
from node.contract.volume import Volume
from node.results import build_results
from node.results.analysis import Analysis
from node.results.encode import encode_file
from node.results.identity import SeriesIdentity
from node.results.source import buildable_header, buildable_volume
from node.results.sr.encoded import EncodedSequence
from node.results.sr.tid1500 import build_sr, image_library
from tests.support.datasets import dataset_differences, with_group_descriptors
from tests.test_results import lung_prediction
from tools.synthetic.chest_ct import make_chest_ct

#: Differ between any two builds (creation times; ContributionDateTime is copied over).
_PER_BUILD = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")


def _written(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def _both(volume: Volume, prediction: Prediction, template: ResultTemplate) -> list[Dataset]:
    seg = build_results(volume, prediction, template, tags=["seg"]).seg
    headers = buildable_volume(volume)
    analysis = Analysis(headers, prediction, template)
    series = SeriesIdentity.of(
        template, series_instance_uid="2.25.7", series_number=9002, series_description="AI SR"
    )
    built = [
        build_sr(
            headers,
            prediction,
            template,
            seg,
            series=series,
            sop_instance_uid="2.25.8",
            revision=1,
            analysis=analysis,
            splice_groups=splice,
        )
        for splice in (True, False)
    ]
    for keyword in _PER_BUILD:
        if keyword in built[1]:
            setattr(built[0], keyword, built[1][keyword].value)
    for mine, theirs in zip(
        built[0].ContributingEquipmentSequence, built[1].ContributingEquipmentSequence, strict=True
    ):
        if "ContributionDateTime" in theirs:
            mine.ContributionDateTime = theirs.ContributionDateTime
    return built


def _library_of(sr: Dataset) -> Dataset:
    (library,) = (
        item
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Image Library"
    )
    return library


def _assert_identical(fast: Dataset, reference: Dataset) -> None:
    # The node's writer copies the Image Library's entries as they were encoded.
    assert _held(_library_of(fast))
    encoded = encode_file(fast)
    assert _held(_library_of(fast))
    assert encoded == _written(reference)
    assert dataset_differences(fast, reference, _PER_BUILD) == []
    assert _written(fast) == _written(reference)


def test_fast_sr_equals_highdicoms_for_a_chest() -> None:
    datasets, truth = make_chest_ct(
        n_slices=30, rows=96, columns=96, pixel_spacing_mm=4.0, slice_thickness_mm=8.0
    )
    volume = assemble_volume(datasets)
    prediction = lung_prediction(volume, truth)
    fast, reference = _both(volume, prediction, load_template_by_name("ct_lungs"))
    _assert_identical(fast, reference)
    # highdicom's typed view of the spliced content reads the whole tree.
    assert len(fast.content.get_volumetric_roi_measurement_groups()) == 2
    assert len(fast.content.get_planar_roi_measurement_groups()) == 2  # the outlines


@pytest.mark.parametrize("labels", [100])
def test_fast_sr_equals_highdicoms_for_100_labels(tmp_path: Path, labels: int) -> None:
    _, paths = write_ct_series(tmp_path / "ct", 8, rows=40, columns=40)
    volume = assemble_volume(pydicom.dcmread(path) for path in paths)
    label_map = blob_label_map(volume.shape, labels)
    assert len(np.unique(label_map)) == labels + 1
    template = load_template(write_template(tmp_path, labels))
    fast, reference = _both(volume, Prediction(label_map=label_map), template)
    (measurements,) = (
        item
        for item in fast.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Imaging Measurements"
    )
    assert len(measurements.ContentSequence) == 2 * labels  # volumetric and outline groups
    _assert_identical(fast, reference)


def test_charset_walk_finds_text_in_an_item_shared_by_two_sequences() -> None:
    """The walk visits a shared item once, and still finds its text."""
    from node.results.source import UNICODE, set_character_set

    code = Dataset()
    code.CodeMeaning = "Läsion"
    first, second = Dataset(), Dataset()
    first.ConceptNameCodeSequence = [code]
    second.ConceptNameCodeSequence = [code]
    dataset = Dataset()
    dataset.ContentSequence = [first, second]
    set_character_set(dataset, "ISO_IR 6", "test")
    assert dataset.SpecificCharacterSet == UNICODE
    dataset.ContentSequence[1].ConceptNameCodeSequence[0].CodeMeaning = "Lesion"
    set_character_set(dataset, "ISO_IR 6", "test")
    assert dataset.SpecificCharacterSet == "ISO_IR 6"


def _as_file(library: Dataset) -> Dataset:
    """A minimal SR-like data set holding ``library``, to write as a file."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = Comprehensive3DSRStorage
    dataset.SOPInstanceUID = "2.25.11"
    dataset.SpecificCharacterSet = "ISO_IR 100"
    dataset.ContentSequence = [library]
    return dataset


def _held(library: Dataset) -> list[EncodedSequence]:
    """The library's entry sequences that are still held encoded."""
    return [
        group.ContentSequence
        for group in library.ContentSequence
        if isinstance(group.ContentSequence, EncodedSequence)
        and group.ContentSequence.encoded_items() is not None
    ]


def _images(content: DicomSequence) -> list[Dataset]:
    """A library group's entries (after the descriptors the group holds for all of them)."""
    return [item for item in content if item.ValueType == "IMAGE"]


def _library_sources(tmp_path: Path, count: int, variant: str) -> list[Dataset]:
    first = make_chest_ct(n_slices=1, rows=16, columns=16, slice_thickness_mm=1.25)[0][0]
    del first.PixelData
    images = []
    for index in range(count):  # the phantom's header on ``count`` positions
        image = copy.deepcopy(first)
        image.SOPInstanceUID = f"2.25.{1000 + index}"
        image.InstanceNumber = index + 1
        image.ImagePositionPatient = [-12.0, -12.0, -1.25 * index]
        images.append(image)
    for index, image in enumerate(images):
        image.SpecificCharacterSet = "ISO_IR 100"
        image.PatientName = "Ærøskøbing^Zoë"
        image.StudyDescription = "Thorax natif (réf.)"
        if variant == "optional":  # Spacing Between Slices present; half lack a Frame of Reference
            image.SpacingBetweenSlices = 1.25
            if index % 2:
                del image.FrameOfReferenceUID
        elif variant == "oblique":
            angle = np.deg2rad(17.3)
            image.ImageOrientationPatient = [
                float(np.cos(angle)), float(np.sin(angle)), 0.0,
                0.0, float(np.cos(angle / 3)), float(-np.sin(angle / 3)),
            ]  # fmt: skip
            image.ImagePositionPatient = [-120.123456789, 80.5 + index / 3, index * 1.1 - 0.05]
    if variant != "files":
        return images
    folder = tmp_path / "sources"
    folder.mkdir()
    read = []
    for index, image in enumerate(images):
        image.save_as(folder / f"{index}.dcm", enforce_file_format=True)
        read.append(buildable_header(pydicom.dcmread(folder / f"{index}.dcm")))
    assert isinstance(read[0]._dict[Tag("ImagePositionPatient")], RawDataElement)
    return read


@pytest.mark.parametrize(
    ("count", "variant"),
    [
        *((1, variant) for variant in ("plain", "optional", "oblique", "files")),
        (40, "optional"),
        (300, "oblique"),
        (300, "files"),
    ],
)
def test_image_library_written_from_its_encoded_entries_equals_highdicoms(
    tmp_path: Path, count: int, variant: str
) -> None:
    images = _library_sources(tmp_path, count, variant)
    library = image_library(images)
    held = _held(library)
    assert len(held) == (2 if variant == "optional" and count > 1 else 1)
    fast = encode_file(_as_file(library))
    assert _held(library) == held  # written from the encoded entries, not made
    # highdicom's entries, with what every entry of a group says once on the group.
    reference = with_group_descriptors(hd.sr.ImageLibrary(images)[0])
    # The writer walking highdicom's items (equal to dcmwrite, tests/test_encode.py;
    # dcmwrite itself takes seconds for 300 entries).
    assert encode_file(_as_file(reference)) == fast
    if count < 50:
        assert _written(_as_file(reference)) == fast
    # Read, the entries are made: element by element highdicom's, and written the same.
    assert dataset_differences(library, reference) == []
    assert _held(library) == []
    assert encode_file(_as_file(library)) == fast


def test_image_library_of_1000_sources_written_encoded_equals_its_items(tmp_path: Path) -> None:
    images = _library_sources(tmp_path, 1000, "oblique")
    library = image_library(images)
    fast = encode_file(_as_file(library))
    assert len(_held(library)) == 1
    assert len(_images(library.ContentSequence[0].ContentSequence)) == 1000  # reading makes them
    assert _held(library) == []
    made = encode_file(_as_file(library))  # the writer walks the items made
    assert made == fast


def test_held_entries_read_copied_and_pickled_as_items() -> None:
    images = _library_sources(Path(), 3, "plain")
    library = image_library(images)
    entries = library.ContentSequence[0].ContentSequence
    assert entries.text_items == []  # nothing to walk for text while held
    copied = copy.deepcopy(library).ContentSequence[0].ContentSequence
    assert isinstance(copied, EncodedSequence) and copied.encoded_items() is not None
    assert _images(copied)[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "2.25.1000"
    assert copied.encoded_items() is None and entries.encoded_items() is not None
    assert type(copy.deepcopy(copied)) is DicomSequence  # a copy of made items
    pickled = pickle.loads(pickle.dumps(entries))
    assert type(pickled) is DicomSequence and pickled == copied
    assert entries.encoded_items() is not None  # pickling made items for the copy only
    assert _images(entries)[2].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "2.25.1002"
    assert entries == copied and entries[0] is not copied[0]
    assert entries.encoded_items() is None and len(entries.text_items) == len(entries)
    # The three positions differ along z only: each entry keeps that descriptor.
    (z,) = _images(entries)[0].ContentSequence
    z.MeasuredValueSequence[0].NumericValue = "98765"
    assert b"98765 " in encode_file(_as_file(library))  # a change after reading is written


def test_image_library_of_a_source_without_slice_thickness_fails_as_highdicoms() -> None:
    images = _library_sources(Path(), 2, "plain")
    del images[1].SliceThickness
    with pytest.raises(AttributeError):
        hd.sr.ImageLibrary(images)
    with pytest.raises(AttributeError, match=r"\(0018,0050\)"):
        image_library(images)


def test_quality_warnings_added_to_an_sr_whose_library_is_held() -> None:
    from node.results.quality_note import add_quality_warnings_to_srs, quality_warnings_of

    datasets, truth = make_chest_ct(
        n_slices=12, rows=48, columns=48, pixel_spacing_mm=7.0, slice_thickness_mm=12.0
    )
    volume = assemble_volume(datasets)
    results = build_results(
        volume, lung_prediction(volume, truth), load_template_by_name("ct_lungs")
    )
    sr = results.sr
    add_quality_warnings_to_srs(results.tagged(), ["Slice spacing irregular"])
    assert _held(_library_of(sr))
    written = encode_file(sr)
    assert _held(_library_of(sr))
    assert written == _written(copy.deepcopy(sr))  # pydicom writes the items it makes
    read = pydicom.dcmread(io.BytesIO(written))
    assert quality_warnings_of(read) == ["Slice spacing irregular"]
    assert len(_images(_library_of(read).ContentSequence[0].ContentSequence)) == 12


def test_evidence_references_equal_highdicoms_for_mixed_studies_and_duplicates() -> None:
    from highdicom.sr.utils import collect_evidence

    from node.results.sr.tid1500 import _evidence_references

    images = _library_sources(Path(), 4, "plain")
    images[2].SeriesInstanceUID = "2.25.77"
    images[3].StudyInstanceUID = "2.25.78"
    evidence = [*images, images[1]]  # an instance twice
    study = str(images[0].StudyInstanceUID)
    ours = _evidence_references(evidence, study)
    content = Dataset()
    content.ContentSequence = []
    theirs = collect_evidence(evidence, content, study_instance_uid=study)
    for mine, reference in zip(ours, theirs, strict=True):
        assert len(mine) == len(reference) == 1
        holder, expected = Dataset(), Dataset()
        holder.ContentSequence, expected.ContentSequence = mine, reference
        assert dataset_differences(holder, expected) == []
    assert len(ours[0][0].ReferencedSeriesSequence) == 2


def _element_count(dataset: Dataset) -> int:
    return sum(
        1 + sum(_element_count(item) for item in element.value) if element.VR == "SQ" else 1
        for element in dataset
    )


def test_descriptors_every_image_shares_are_written_once_on_their_group(tmp_path: Path) -> None:
    """A PACS stores an SR's elements one by one (Orthanc: most of its store time), so the
    300-slice library says once what highdicom's repeats on every entry."""
    images = _library_sources(tmp_path, 300, "plain")
    library = image_library(images)
    (group,) = library.ContentSequence
    shared = [item for item in group.ContentSequence if item.ValueType != "IMAGE"]
    names = [item.ConceptNameCodeSequence[0].CodeMeaning for item in shared]
    assert "Modality" in names and "Slice Thickness" in names
    assert "Image Position (Patient) Z" not in names
    for entry in _images(group.ContentSequence):  # only what differs: the position along z
        (own,) = entry.ContentSequence
        assert own.ConceptNameCodeSequence[0].CodeMeaning == "Image Position (Patient) Z"
    theirs = _element_count(hd.sr.ImageLibrary(images)[0])
    assert _element_count(library) < theirs / 4
