"""Header values read once per distinct raw value, and the results built with them.

:class:`~node.results.header_values.HeaderValues` converts each distinct raw value of a
series' headers once: the Image Library, the SR's evidence and the direct SEG's
one-series check read the study, series, frame-of-reference UIDs, slice thickness...
of every source without converting them again in each header. The results must be the
results built from fully converted headers (main's path before, where each header
converted its own), byte for byte, for several series shapes read back from files.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pydicom.dataset
import pytest
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from node.contract.assemble import assemble_volume, load_volume
from node.contract.template import load_template_by_name
from node.results import build_results
from node.results.encode import encode_file
from node.results.header_values import HeaderValues
from node.results.source import buildable_header, buildable_volume
from node.results.sr.tid1500 import _evidence_references, image_library
from tests.support.datasets import (
    PER_BUILD,
    align_per_build,
    dataset_differences,
    save_little_endian,
)
from tests.test_results import lung_prediction
from tools.synthetic.chest_ct import make_chest_ct

#: Tags every source of a series holds with the same bytes.
_REPEATED = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SliceThickness")


def _thickness_by_slice(index: int, dataset: Dataset) -> None:
    dataset.SliceThickness = f"{1.25 + (index % 3) * 0.5}"


def _latin1_with_private(index: int, dataset: Dataset) -> None:
    dataset.SpecificCharacterSet = "ISO_IR 100"
    dataset.PatientName = "Müller^Jürgen"
    dataset.StudyDescription = "Thorax natif (réf.)"
    block = dataset.private_block(0x0009, "AINODE TEST", create=True)
    block.add_new(0x01, "LO", "réf.")
    block.add_new(0x02, "DS", "1.5")
    dataset.SpacingBetweenSlices = "10.0"


_Edit = Callable[[int, Dataset], None] | None


def _write(folder: Path, slices: int, edit: _Edit, implicit: bool) -> tuple[list[Path], Any]:
    datasets, truth = make_chest_ct(
        n_slices=slices, rows=40, columns=40, pixel_spacing_mm=9.0, slice_thickness_mm=10.0
    )
    folder.mkdir()
    paths = []
    for index, dataset in enumerate(datasets):
        if edit is not None:
            edit(index, dataset)
        paths.append(save_little_endian(dataset, folder / f"{index:03d}.dcm", implicit=implicit))
    return paths, truth


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> Counter[int]:
    """Raw elements pydicom's data sets convert, counted by tag."""
    counted: Counter[int] = Counter()
    convert = pydicom.dataset.convert_raw_data_element

    def counting(raw: RawDataElement, **kwargs: Any) -> DataElement:
        counted[raw.tag] += 1
        return convert(raw, **kwargs)

    monkeypatch.setattr(pydicom.dataset, "convert_raw_data_element", counting)
    return counted


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_values_are_pydicoms_for_every_element(tmp_path: Path, implicit: bool) -> None:
    paths, _ = _write(tmp_path / "s", 3, _latin1_with_private, implicit)
    values = HeaderValues()
    for path in paths:
        header = buildable_header(pydicom.dcmread(path))
        converted = buildable_header(pydicom.dcmread(path))
        for tag in list(converted.keys()):
            expected = converted[tag].value
            value = values(header, tag)
            assert value == expected, Tag(tag)
            assert type(value) is type(expected), Tag(tag)
    assert values.get(header, Tag("SpacingBetweenSlices")) == 10.0
    assert values.get(header, Tag("PatientWeight"), "absent") == "absent"
    with pytest.raises(KeyError):
        values(header, Tag("PatientWeight"))


def test_each_distinct_raw_value_is_converted_once(
    tmp_path: Path, conversions: Counter[int]
) -> None:
    paths, _ = _write(tmp_path / "s", 20, None, implicit=False)
    headers = [buildable_header(pydicom.dcmread(path)) for path in paths]
    values = HeaderValues()
    for keyword in (*_REPEATED, "SOPInstanceUID"):
        read = [values(header, Tag(keyword)) for header in headers]
        assert all(
            value == getattr(header, keyword) for value, header in zip(read, headers, strict=True)
        )
        if keyword in _REPEATED:
            assert all(value is read[0] for value in read)  # one value for all
    for keyword in _REPEATED:
        # values: once (in the first header); the getattr check: once in each other
        assert conversions[Tag(keyword)] == len(headers)
    assert conversions[Tag("SOPInstanceUID")] == len(headers)  # one per header


def test_library_and_evidence_convert_repeated_values_once_per_series(
    tmp_path: Path, conversions: Counter[int]
) -> None:
    paths, _ = _write(tmp_path / "s", 30, None, implicit=False)
    headers = [buildable_header(pydicom.dcmread(path)) for path in paths]
    image_library(headers)
    _evidence_references(headers, str(headers[0].StudyInstanceUID))
    for keyword in (*_REPEATED, "SOPClassUID", "Modality"):
        # once by the library, once by the evidence (main's path: once per header)
        assert conversions[Tag(keyword)] <= 2, keyword


def test_decoded_text_elements_are_those_each_header_converts(tmp_path: Path) -> None:
    paths, _ = _write(tmp_path / "s", 4, _latin1_with_private, implicit=False)
    sources = [pydicom.dcmread(path) for path in paths]
    headers = buildable_volume(assemble_volume(sources)).datasets
    name = Tag("PatientName")
    elements = [header._dict[name] for header in headers]
    assert len({id(element) for element in elements}) == len(elements)  # each its own
    for element, path in zip(elements, paths, strict=True):
        own = pydicom.dcmread(path)[name]  # converted by pydicom from its own file
        assert type(element) is DataElement
        assert vars(element) == vars(own)


_SHAPES: dict[str, tuple[_Edit, bool, bool]] = {
    # name: (edit, implicit VR, files given in shuffled order)
    "axial": (None, False, False),
    "unsorted": (None, False, True),
    "implicit": (None, True, True),
    "thickness-by-slice": (_thickness_by_slice, False, False),
    "latin1-private-spacing": (_latin1_with_private, False, True),
}


@pytest.mark.parametrize("shape", sorted(_SHAPES))
def test_results_equal_those_of_fully_converted_headers(tmp_path: Path, shape: str) -> None:
    edit, implicit, shuffled = _SHAPES[shape]
    paths, truth = _write(tmp_path / "s", 12, edit, implicit)
    if shuffled:
        random.Random(7).shuffle(paths)
    template = load_template_by_name("ct_lungs")
    built = []
    for convert_all in (False, True):
        if convert_all:  # every element converted in its own header: nothing shared
            sources = [pydicom.dcmread(path) for path in paths]
            for source in sources:
                for _ in source:
                    pass
            volume = assemble_volume(sources)
        else:  # the worker's read: headers of raw elements
            volume = load_volume(paths)
        results = build_results(volume, lung_prediction(volume, truth), template)  # type: ignore[arg-type]
        built.append([results.seg, results.sr])
    for mine, theirs in zip(*built, strict=True):
        align_per_build(mine, theirs)
        assert encode_file(mine) == encode_file(theirs)
        assert dataset_differences(mine, theirs, PER_BUILD) == []
