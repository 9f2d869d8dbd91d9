"""Parts of the result builders: measurements, outlines, analysis, Image Library, idempotency."""

from __future__ import annotations

import math

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from node.contract.assemble import assemble_volume
from node.contract.kinds import ResultKind, profile_tags
from node.contract.plugin import Attribution, DerivedImage, Prediction
from node.errors import TemplateError
from node.results import build_results, load_template, load_template_by_name
from node.results.analysis import Analysis
from node.results.contour import outlines, polygon_area
from node.results.measure import (
    compute,
    crofton_weights,
    largest_area_slice,
    largest_axial_diameter_mm,
    surface_area_mm2,
    volume_mm3,
)
from node.results.sr.tid1500 import _CODED_MODALITY, image_library
from tests.support.datasets import with_group_descriptors
from tests.test_conformance import TEMPLATES
from tools.synthetic.chest_ct import make_chest_ct
from tools.synthetic.head_mr import make_head_mr

SPACINGS = [(1.0, 1.0, 1.0), (3.0, 0.8, 0.8), (5.0, 2.0, 2.0)]


def sphere(spacing: tuple[float, float, float], radius: float = 25.0) -> np.ndarray:
    shape = tuple(int(80 / s) for s in spacing)
    grids = np.meshgrid(
        *[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"
    )
    return sum((g - 40.0) ** 2 for g in grids) <= radius**2


@pytest.mark.parametrize("spacing", SPACINGS)
def test_sphere_measurements_match_geometry(spacing: tuple[float, float, float]) -> None:
    mask = sphere(spacing)
    assert volume_mm3(mask, spacing) == pytest.approx(4 / 3 * math.pi * 25**3, rel=0.02)
    # Cauchy-Crofton: within 2 % (counting voxel faces would give +50 %).
    assert surface_area_mm2(mask, spacing) == pytest.approx(4 * math.pi * 25**2, rel=0.02)
    # Largest in-plane diameter within one in-plane pixel of 50 mm.
    assert abs(largest_axial_diameter_mm(mask, spacing) - 50.0) <= spacing[1] * 1.01
    assert largest_area_slice(mask) == pytest.approx(40.0 / spacing[0], abs=1)
    assert compute("volume", "mL", mask, mask.astype(float), spacing) == pytest.approx(
        volume_mm3(mask, spacing) / 1000.0
    )
    diameter_cm = compute("largest_axial_diameter", "cm", mask, mask.astype(float), spacing)
    assert diameter_cm == pytest.approx(largest_axial_diameter_mm(mask, spacing) / 10.0)


def test_statistics_and_empty_masks() -> None:
    values = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    mask = values >= 20
    spacing = (1.0, 1.0, 1.0)
    assert compute("mean", "1", mask, values, spacing) == 21.5
    assert compute("min", "1", mask, values, spacing) == 20.0
    assert compute("max", "1", mask, values, spacing) == 23.0
    assert compute("std", "1", mask, values, spacing) == pytest.approx(np.std([20, 21, 22, 23]))
    empty = np.zeros_like(mask)
    assert math.isnan(compute("mean", "1", empty, values, spacing))
    assert math.isnan(largest_axial_diameter_mm(empty, spacing))
    assert surface_area_mm2(empty, spacing) == 0.0 and volume_mm3(empty, spacing) == 0.0
    assert largest_area_slice(empty) is None
    for s in SPACINGS:
        assert sum(crofton_weights(s)) == pytest.approx(1.0)


def test_outlines_enclose_exactly_the_pixels_of_each_component() -> None:
    mask = np.zeros((12, 14), dtype=bool)
    mask[1:6, 1:8] = True
    mask[3, 4] = False  # a hole: filled in the outline
    mask[2:4, 8] = True  # a bump
    mask[9:11, 10:13] = True  # a second component
    mask[11, 13] = True  # touches the second only at a corner: its own component
    polygons = outlines(mask)
    assert len(polygons) == 3
    assert [polygon_area(p) for p in polygons] == [37.0, 6.0, 1.0]  # largest first
    for polygon in polygons:
        assert np.array_equal(polygon[0], polygon[-1])  # closed
        assert (polygon >= 0).all() and (polygon[:, 0] <= 14).all() and (polygon[:, 1] <= 12).all()
    assert outlines(np.zeros((4, 4), dtype=bool)) == []


def _head() -> tuple[Analysis, Prediction]:
    datasets, _ = make_head_mr(
        n_slices=12, rows=32, columns=32, pixel_spacing_mm=6.0, slice_thickness_mm=10.0
    )
    volume = assemble_volume(datasets)
    label_map = np.zeros(volume.shape, dtype=np.uint8)
    label_map[volume.array > 300] = 1
    label_map[volume.array > 900] = 2
    prediction = Prediction(
        label_map=label_map,
        measurements={2: {"volume_ml": 12.5}},
        findings={2: {"presence": "present"}},
    )
    return Analysis(volume, prediction, load_template(TEMPLATES / "mr_lesion.yaml")), prediction


def test_analysis_prefers_the_plugins_values_and_evaluates_findings() -> None:
    analysis, prediction = _head()
    lesion = analysis.measurements[2]
    assert lesion["volume_ml"] == 12.5  # the plugin's value wins over the computed one
    mask = prediction.label_map == 2
    assert lesion["max_signal"] == float(analysis.volume.array[mask].max())
    assert list(lesion) == [m.key for m in analysis.template.measurements]  # template order
    found = {f.spec.key: f.value.meaning for f in analysis.findings[2]}
    assert found == {"size": "Large", "presence": "Present"}  # 12.5 mL >= 10
    assert analysis.findings[1] == []  # both findings are for the lesion only
    assert analysis.summary(2).startswith("Lesion: 12.5 mL")


@pytest.mark.parametrize(
    ("findings", "message"),
    [
        ({2: {"presence": "maybe"}}, "not one of"),
        ({2: {"size": "large"}}, "plugin-given findings"),
        ({7: {"presence": "present"}}, "plugin-given findings"),
    ],
)
def test_plugin_findings_must_match_the_template(findings: dict, message: str) -> None:
    analysis, prediction = _head()
    with pytest.raises(TemplateError, match=message):
        Analysis(
            analysis.volume,
            Prediction(label_map=prediction.label_map, findings=findings),
            analysis.template,
        )


@pytest.mark.parametrize("source", ["chest-ct", "head-mr-coronal", "CT_small", "MR_small"])
def test_fast_image_library_equals_highdicoms(source: str) -> None:
    if source == "chest-ct":
        images = make_chest_ct(n_slices=8, rows=32, columns=32)[0]
    elif source == "head-mr-coronal":
        images = make_head_mr(n_slices=6, rows=32, columns=32, orientation="coronal")[0]
    else:
        images = [pydicom.dcmread(get_testdata_file(f"{source}.dcm"))]
    assert image_library(images) == with_group_descriptors(hd.sr.ImageLibrary(images)[0])


@pytest.mark.parametrize("sop_class_uid", sorted(_CODED_MODALITY))
def test_fast_image_library_codes_each_sop_class_as_highdicom_does(sop_class_uid: str) -> None:
    image = make_chest_ct(n_slices=1, rows=16, columns=16)[0][0]
    image.SOPClassUID = sop_class_uid
    assert image_library([image]) == hd.sr.ImageLibrary([image])[0]


def test_rebuilding_gives_the_same_uids_for_every_kind() -> None:
    datasets, _ = make_head_mr(n_slices=8, rows=32, columns=32, pixel_spacing_mm=6.0)
    volume = assemble_volume(datasets)
    label_map = (volume.array > 900).astype(np.uint8) * 2
    probabilities = np.stack([np.zeros(volume.shape), (label_map == 2) * 0.8]).astype(np.float32)
    prediction = Prediction(
        label_map=label_map,
        probabilities=probabilities,
        attribution=Attribution(probabilities[1], "Grad-CAM", "Lesion"),
        derived_image=DerivedImage(volume.array * 0.5, "half"),
    )
    template = load_template(TEMPLATES / "mr_lesion.yaml")
    tags = profile_tags([k.value for k in ResultKind])

    def identities() -> dict[str, list[tuple[str, str]]]:
        results = build_results(volume, prediction, template, tags=tags)
        return {
            tag: [(str(d.SeriesInstanceUID), str(d.SOPInstanceUID)) for d in datasets]
            for tag, datasets in results.objects.items()
        }

    first, second = identities(), identities()
    assert first == second
    uids = [uid for pairs in first.values() for pair in pairs for uid in pair]
    series = {pair[0] for pairs in first.values() for pair in pairs}
    assert len(series) == len(first)  # one series per tag
    assert len(set(uids)) == len(series) + sum(len(p) for p in first.values())


def test_series_descriptions_keep_the_not_for_diagnosis_marking() -> None:
    from node.results.build import KIND_LABELS, series_description

    template = load_template_by_name("ct_lungs")
    for revision in (1, 2, 12):
        text = series_description(template, KIND_LABELS[ResultKind.SC], revision)
        assert "NOT FOR DIAGNOSTIC USE" in text and len(text) <= 64
    assert series_description(template, "SR", 2) == "AI lungs SR (rev 2, supersedes earlier)"
