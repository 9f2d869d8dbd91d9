"""The SR built the fast way is the SR highdicom's constructor builds, byte for byte.

``build_sr`` adds the measurement groups after highdicom's SR constructor (and the
Image Library, tests/test_result_parts.py); ``splice_groups=False`` passes them through
the constructor. Both are built from the same inputs, a ct_lungs-like chest and a
100-label map, and compared element by element and as written files.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from benchmarks.ct_series import write_ct_series
from benchmarks.encoding import blob_label_map, write_template
from node.contract.assemble import assemble_volume
from node.contract.plugin import Prediction
from node.contract.template import ResultTemplate, load_template, load_template_by_name
from node.contract.volume import Volume
from node.results import build_results
from node.results.analysis import Analysis
from node.results.identity import SeriesIdentity
from node.results.source import buildable_volume
from node.results.sr.tid1500 import build_sr
from tests.support.datasets import dataset_differences
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


def _assert_identical(fast: Dataset, reference: Dataset) -> None:
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
