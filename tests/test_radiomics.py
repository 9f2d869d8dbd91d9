"""Radiomics with pyradiomics: known answers on phantoms, codes and units, SR, template, API."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from node.contract.assemble import assemble_volume
from node.contract.plugin import Prediction
from node.contract.template import ResultTemplate, default_template_dir
from node.contract.volume import Volume
from node.errors import TemplateError
from node.results import build_results, load_template, load_template_by_name
from node.results.radiomics import (
    CSV_COLUMNS,
    CSV_FILE,
    JSON_FILE,
    RadiomicsResult,
    compute_radiomics,
    sitk_image,
    write_radiomics,
)
from node.results.radiomics_codes import (
    IBSI_SCHEME,
    PRIVATE_CODES,
    PRIVATE_SCHEME,
    TABLE_FILE,
    feature_code,
    feature_table_markdown,
)
from node.results.sr.radiomics import sr_measurement_items, sr_measurements
from tests.support.admin import ServedNode, served_node
from tests.support.dcmtk import storescu
from tests.support.pacs import node_config, one_result_each, orthanc_for_node
from tests.support.validators import dciodvfy_errors, dsrdump
from tools.net import wait_until
from tools.node_process import NodeProcess
from tools.orthanc_rest import lookup_study, send_to_modality, upload_many
from tools.synthetic.chest_ct import make_chest_ct, write_series

pytest.importorskip("radiomics", reason="pyradiomics is installed by make run / make test")

ALL_CLASSES = ["firstorder", "shape", "glcm", "glrlm", "glszm", "gldm", "ngtdm"]
#: Non-deprecated features pyradiomics 3.0.1 computes per class.
FEATURE_COUNTS = {
    "firstorder": 18,
    "shape": 14,
    "glcm": 24,
    "glrlm": 16,
    "glszm": 16,
    "gldm": 14,
    "ngtdm": 5,
}
SPACING = 1.5  # mm, isotropic phantom grid


def radiomics_template(
    directory: Path,
    classes: dict[int, list[str]],
    *,
    settings: str = "",
    format_version: int = 2,
) -> Path:
    """The shipped ct_lungs template with ``radiomics`` added to some segments."""
    text = (default_template_dir() / "ct_lungs.yaml").read_text()
    text = text.replace("format_version: 2", f"format_version: {format_version}", 1)
    for label, wanted in classes.items():
        anchor = f"  - label_value: {label}\n"
        head, _, tail = text.partition(anchor)
        colour_end = tail.index("\n", tail.index("    colour:")) + 1
        tail = f"{tail[:colour_end]}    radiomics: [{', '.join(wanted)}]\n{tail[colour_end:]}"
        text = head + anchor + tail
    text += settings
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ct_lungs.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def grid() -> Volume:
    """A 40 x 64 x 64 CT grid with 1.5 mm isotropic voxels (its pixels get replaced)."""
    datasets, _ = make_chest_ct(
        n_slices=40, rows=64, columns=64, pixel_spacing_mm=SPACING, slice_thickness_mm=SPACING
    )
    return assemble_volume(datasets)


@pytest.fixture(scope="module")
def all_classes(tmp_path_factory: pytest.TempPathFactory) -> ResultTemplate:
    """Every class for segment 1, first order and shape only for segment 2."""
    path = radiomics_template(
        tmp_path_factory.mktemp("template"), {1: ALL_CLASSES, 2: ["firstorder", "shape"]}
    )
    return load_template(path)


def millimetres(volume: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel centre coordinates (z, y, x) in mm from the grid centre."""
    z, y, x = np.indices(volume.shape, dtype=np.float64)
    centre = (np.asarray(volume.shape, dtype=np.float64) - 1) / 2
    s = volume.spacing
    return (z - centre[0]) * s[0], (y - centre[1]) * s[1], (x - centre[2]) * s[2]


def phantom(volume: Volume, label_map: np.ndarray, values: np.ndarray) -> tuple[Volume, Prediction]:
    return dataclasses.replace(volume, array=values.astype(np.float32)), Prediction(
        label_map=label_map.astype(np.uint8)
    )


def features_of(result: RadiomicsResult, label: int) -> dict[str, float | None]:
    return {f"{r.feature_class}_{r.feature}": r.value for r in result.for_segment(label)}


def compute(volume: Volume, prediction: Prediction, template: ResultTemplate) -> RadiomicsResult:
    assert prediction.label_map is not None
    numbers = np.zeros(prediction.label_map.shape, dtype=np.uint8)
    for segment in template.segments:
        numbers[prediction.label_map == segment.label_value] = template.segment_number(
            segment.label_value
        )
    return compute_radiomics(volume, numbers, template)


# -- known answers -----------------------------------------------------------------------


def test_sphere_volume_surface_and_sphericity(grid: Volume, all_classes: ResultTemplate) -> None:
    z, y, x = millimetres(grid)
    radius = 12.0
    sphere = z**2 + y**2 + x**2 <= radius**2
    volume, prediction = phantom(grid, sphere, np.where(sphere, 40.0, -1000.0))
    result = compute(volume, prediction, all_classes)
    shape = features_of(result, 1)
    true_volume = 4 / 3 * math.pi * radius**3
    true_area = 4 * math.pi * radius**2
    # Voxel volume is exact; the marching-cubes mesh of a digitised sphere is close.
    assert shape["shape_VoxelVolume"] == pytest.approx(np.count_nonzero(sphere) * SPACING**3)
    assert shape["shape_MeshVolume"] == pytest.approx(true_volume, rel=0.03)
    # A marching-cubes mesh of a binary mask overestimates the area of a smooth surface
    # (staircase): +8 to +12 % for digitised spheres of radius 6 to 18 voxels; so the
    # sphericity of a digitised sphere is about 0.90-0.93, not 1.
    assert 1.0 < shape["shape_SurfaceArea"] / true_area < 1.14  # type: ignore[operator]
    assert 0.88 < shape["shape_Sphericity"] < 0.95  # type: ignore[operator]
    assert shape["shape_Maximum3DDiameter"] == pytest.approx(2 * radius, abs=2 * SPACING)
    assert shape["shape_Elongation"] == pytest.approx(1.0, abs=0.01)
    assert shape["shape_Flatness"] == pytest.approx(1.0, abs=0.01)
    # Uniform 40 HU inside: first order is exact, one grey-level bin.
    assert shape["firstorder_Mean"] == pytest.approx(40.0)
    assert shape["firstorder_Variance"] == pytest.approx(0.0, abs=1e-9)
    assert shape["firstorder_Entropy"] == pytest.approx(0.0, abs=1e-9)
    assert shape["firstorder_Uniformity"] == pytest.approx(1.0)
    assert len(shape) == sum(FEATURE_COUNTS.values())


def test_ellipsoid_axis_lengths_elongation_and_flatness(
    grid: Volume, all_classes: ResultTemplate
) -> None:
    z, y, x = millimetres(grid)
    a, b, c = 24.0, 15.0, 9.0  # semi-axes along columns (x), rows (y), slices (z)
    ellipsoid = (x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2 <= 1.0
    volume, prediction = phantom(grid, ellipsoid, np.where(ellipsoid, 60.0, -1000.0))
    shape = features_of(compute(volume, prediction, all_classes), 1)
    # pyradiomics' axis lengths are 4 sqrt(eigenvalue); a solid ellipsoid's variance
    # along a semi-axis r is r^2 / 5.
    assert shape["shape_MajorAxisLength"] == pytest.approx(4 * a / math.sqrt(5), rel=0.03)
    assert shape["shape_MinorAxisLength"] == pytest.approx(4 * b / math.sqrt(5), rel=0.03)
    assert shape["shape_LeastAxisLength"] == pytest.approx(4 * c / math.sqrt(5), rel=0.04)
    assert shape["shape_Elongation"] == pytest.approx(b / a, abs=0.02)
    assert shape["shape_Flatness"] == pytest.approx(c / a, abs=0.02)
    assert shape["shape_MeshVolume"] == pytest.approx(4 / 3 * math.pi * a * b * c, rel=0.03)


def test_two_level_region_first_order(grid: Volume, all_classes: ResultTemplate) -> None:
    z, y, x = millimetres(grid)
    sphere = z**2 + y**2 + x**2 <= 15.0**2
    values = np.where(sphere, np.where(x < 0, 0.0, 100.0), -1000.0)
    volume, prediction = phantom(grid, sphere, values)
    features = features_of(compute(volume, prediction, all_classes), 1)
    high = np.count_nonzero(sphere & (x >= 0)) / np.count_nonzero(sphere)
    entropy = -(high * math.log2(high) + (1 - high) * math.log2(1 - high))
    assert features["firstorder_Mean"] == pytest.approx(100 * high)
    assert features["firstorder_Variance"] == pytest.approx(100**2 * high * (1 - high))
    assert features["firstorder_Minimum"] == 0.0
    assert features["firstorder_Maximum"] == 100.0
    assert features["firstorder_Range"] == 100.0
    # Bin width 25 HU: two bins.
    assert features["firstorder_Uniformity"] == pytest.approx(high**2 + (1 - high) ** 2)
    assert features["firstorder_Entropy"] == pytest.approx(entropy, rel=1e-6)


def test_image_has_the_source_geometry_and_anisotropic_spacing_counts(tmp_path: Path) -> None:
    datasets, _ = make_chest_ct(
        n_slices=12,
        rows=40,
        columns=48,
        pixel_spacing_mm=2.0,
        slice_thickness_mm=5.0,
        flip_left_right=True,
    )
    volume = assemble_volume(datasets)
    image = sitk_image(volume)
    for index in [(0, 0, 0), (47, 0, 0), (3, 39, 11), (20, 10, 5)]:
        expected = volume.affine @ np.array([*index, 1.0])
        assert image.TransformIndexToPhysicalPoint(index) == pytest.approx(expected[:3])
    labels = np.zeros(volume.shape, np.uint8)
    labels[3:9, 10:30, 12:36] = 1
    template = load_template(radiomics_template(tmp_path, {1: ["shape"]}))
    shape = features_of(compute(volume, Prediction(label_map=labels), template), 1)
    assert shape["shape_VoxelVolume"] == pytest.approx(6 * 20 * 24 * 2.0 * 2.0 * 5.0)
    # The box is 24 columns x 2 mm, 20 rows x 2 mm, 6 slices x 5 mm: 48 x 40 x 30 mm.
    assert shape["shape_Maximum2DDiameterSlice"] == pytest.approx(math.hypot(48, 40), abs=2.5)


# -- codes, units, parameters -------------------------------------------------------------


def test_every_pyradiomics_feature_has_a_code_and_a_unit() -> None:
    from pydicom.sr.codedict import Collection
    from radiomics import getFeatureClasses

    dicom = {c.value: c.meaning for c in Collection(IBSI_SCHEME).concepts.values()}
    classes = getFeatureClasses()
    for name in ALL_CLASSES:
        features = [
            f for f, deprecated in classes[name].getFeatureNames().items() if not deprecated
        ]
        assert len(features) == FEATURE_COUNTS[name]
        for feature in features:
            code = feature_code(name, feature)
            assert len(code.value) <= 16 and len(code.meaning) <= 64
            if code.scheme == IBSI_SCHEME and code.value in dicom:
                assert code.meaning == dicom[code.value]
            if code.scheme == PRIVATE_SCHEME:
                assert code.meaning == f"{name}_{feature}"
    values = [feature_code(c, f).value for c, f in PRIVATE_CODES]
    assert len(set(values)) == len(values)
    with pytest.raises(KeyError, match="shape2D_Perimeter"):
        feature_code("shape2D", "Perimeter")


def test_feature_table_is_current() -> None:
    shipped = (default_template_dir() / TABLE_FILE).read_text()
    assert shipped == feature_table_markdown(), (
        "dicom_sr_templates/RADIOMICS.md is stale: run python -m node.results.radiomics_codes"
    )


def test_units_follow_the_modality(grid: Volume, all_classes: ResultTemplate) -> None:
    z, y, x = millimetres(grid)
    sphere = z**2 + y**2 + x**2 <= 9.0**2
    volume, prediction = phantom(grid, sphere, np.where(sphere, 30.0, 0.0))
    units = {
        f"{r.feature_class}_{r.feature}": r.unit
        for r in compute(volume, prediction, all_classes).features
    }
    assert units["firstorder_Mean"] == "[hnsf'U]"
    assert units["firstorder_Variance"] == "[hnsf'U]2"
    assert units["firstorder_TotalEnergy"] == "[hnsf'U]2.mm3"
    assert units["shape_MeshVolume"] == "mm3"
    assert units["shape_SurfaceArea"] == "mm2"
    assert units["shape_SurfaceVolumeRatio"] == "/mm"
    assert units["shape_Maximum3DDiameter"] == "mm"
    assert units["glcm_Contrast"] == units["firstorder_Skewness"] == "1"
    mr = dataclasses.replace(volume, datasets=tuple(_as_mr(d) for d in volume.datasets))
    mr_units = {
        f"{r.feature_class}_{r.feature}": r.unit
        for r in compute(mr, prediction, all_classes).features
    }
    assert mr_units["firstorder_Mean"] == "[arb'U]"
    assert mr_units["shape_MeshVolume"] == "mm3"


def _as_mr(dataset: pydicom.Dataset) -> pydicom.Dataset:
    copy = pydicom.Dataset(dataset)
    copy.Modality = "MR"
    return copy


def test_parameter_set_is_recorded_with_its_hash(
    grid: Volume, tmp_path: Path, all_classes: ResultTemplate
) -> None:
    z, y, x = millimetres(grid)
    sphere = z**2 + y**2 + x**2 <= 9.0**2
    volume, prediction = phantom(grid, sphere, np.where(sphere, 30.0, 0.0))
    default = compute(volume, prediction, all_classes)
    settings = default.parameters["settings"]
    assert settings["binWidth"] == 25.0
    assert settings["resampledPixelSpacing"] is None
    assert default.parameters["library"] == "pyradiomics"
    assert default.parameters["classes"] == {"1": ALL_CLASSES, "2": ["firstorder", "shape"]}
    canonical = json.dumps(default.parameters, sort_keys=True, separators=(",", ":"))
    assert default.parameters_sha256 == hashlib.sha256(canonical.encode()).hexdigest()
    narrow = load_template(
        radiomics_template(tmp_path, {1: ["firstorder"]}, settings="radiomics: {bin_width: 5}\n")
    )
    fine = compute(volume, prediction, narrow)
    assert fine.parameters["settings"]["binWidth"] == 5.0
    assert fine.parameters_sha256 != default.parameters_sha256


def test_empty_and_unrequested_segments(grid: Volume, all_classes: ResultTemplate) -> None:
    z, y, x = millimetres(grid)
    sphere = z**2 + y**2 + x**2 <= 9.0**2
    volume, prediction = phantom(grid, sphere, np.where(sphere, 30.0, 0.0))  # label 2 empty
    result = compute(volume, prediction, all_classes)
    assert [(s.label_value, s.reason) for s in result.skipped] == [(2, "empty segment")]
    assert result.for_segment(2) == []
    assert set(result.seconds) == {1}


# -- template ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("classes", "settings", "version", "message"),
    [
        ({1: ["glcm", "texture"]}, "", 2, r"segments\[0\]\.radiomics\[1\]"),
        ({1: ["glcm", "shape", "glcm"]}, "", 2, r"radiomics\[2\]: duplicate class 'glcm'"),
        ({1: ["shape"]}, "", 1, "'radiomics' needs format_version 2"),
        ({}, "radiomics: {bin_width: 25}\n", 2, "no segment lists 'radiomics' classes"),
        ({1: ["shape"]}, "radiomics: {bin_width: 0}\n", 2, r"radiomics\.bin_width"),
        ({1: []}, "", 2, r"segments\[0\]\.radiomics"),
    ],
)
def test_template_radiomics_is_checked(
    tmp_path: Path, classes: dict[int, list[str]], settings: str, version: int, message: str
) -> None:
    path = radiomics_template(tmp_path, classes, settings=settings, format_version=version)
    with pytest.raises(TemplateError, match=message):
        load_template(path)


def test_shipped_template_without_radiomics_computes_none(grid: Volume) -> None:
    labels = np.zeros(grid.shape, np.uint8)
    labels[10:20, 10:30, 10:30] = 1
    template = load_template_by_name("ct_lungs")
    assert template.radiomics_classes == {}
    results = build_results(grid, Prediction(label_map=labels), template, tags=["sr"])
    assert results.radiomics is None
    assert "radiomics" not in results.seconds
    declared = {(m.concept.scheme, m.concept.value) for m in template.measurements}
    for group in results.sr.content.get_volumetric_roi_measurement_groups():
        names = {(m.name.scheme_designator, m.name.value) for m in group.get_measurements()}
        assert names <= declared  # only the template's own measurements


# -- SR ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sr_case(
    grid: Volume, all_classes: ResultTemplate, tmp_path_factory: pytest.TempPathFactory
) -> tuple[RadiomicsResult, Path]:
    z, y, x = millimetres(grid)
    right = (z**2 + y**2 + (x + 14) ** 2) <= 10.0**2
    left = (z**2 + y**2 + (x - 14) ** 2) <= 8.0**2
    rng = np.random.default_rng(7)
    values = np.where(right | left, 20.0 + 15.0 * rng.standard_normal(grid.shape), -1000.0)
    volume, prediction = phantom(grid, right * 1 + left * 2, values)
    results = build_results(volume, prediction, all_classes)
    assert results.radiomics is not None
    path = tmp_path_factory.mktemp("sr") / "sr.dcm"
    results.sr.save_as(path, enforce_file_format=True)
    return results.radiomics, path


def test_sr_with_radiomics_is_valid(sr_case: tuple[RadiomicsResult, Path]) -> None:
    _, path = sr_case
    assert dciodvfy_errors(path) == []
    if shutil.which("dsrdump") is None:
        pytest.skip("dcmtk dsrdump not installed")
    dumped = dsrdump(path)
    assert dumped.returncode == 0, dumped.stderr
    assert 'TEXT:(,,"Algorithm Name")="pyradiomics"' in dumped.stdout
    with_codes = subprocess.run(
        ["dsrdump", "+Pc", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert '(RNU0,IBSI,"Volume of Mesh")' in with_codes
    assert '(FO-KURTOSIS,99AINODE,"firstorder_Kurtosis")' in with_codes
    assert "(mm3,UCUM," in with_codes


def test_sr_reads_back_every_feature_with_highdicom(
    sr_case: tuple[RadiomicsResult, Path],
) -> None:
    result, path = sr_case
    sr = hd.sr.srread(path)
    groups = {
        str(g.tracking_identifier): g
        for g in sr.content.get_volumetric_roi_measurement_groups()  # type: ignore[attr-defined]
    }
    expected_counts = {
        "right-lung": sum(FEATURE_COUNTS.values()),
        "left-lung": FEATURE_COUNTS["firstorder"] + FEATURE_COUNTS["shape"],
    }
    for label, tracking_id in ((1, "right-lung"), (2, "left-lung")):
        # The template's own measurements may share an IBSI code (ct_lungs' surface
        # area): the features are the measurements pyradiomics is the algorithm of.
        read = {
            (str(m.name.value), str(m.name.scheme_designator)): m
            for m in groups[tracking_id].get_measurements()
            if _algorithm(m)[0] == "pyradiomics"
        }
        rows = [r for r in result.for_segment(label) if r.value is not None]
        assert len(rows) == len(read) == expected_counts[tracking_id]
        for row in rows:
            measurement = read[(row.code_value, row.coding_scheme)]
            assert measurement.value == pytest.approx(row.value, rel=1e-9, abs=1e-12)
            assert measurement.unit.value == row.unit
            assert measurement.name.meaning == row.code_meaning
        _, parameters = _algorithm(next(iter(read.values())))
        assert f"radiomics_parameters_sha256={result.parameters_sha256}" in parameters
        assert "bin_width=25" in parameters and "resampling=none" in parameters
    schemes = {str(i.CodingSchemeDesignator) for i in sr.CodingSchemeIdentificationSequence}
    assert PRIVATE_SCHEME in schemes


def test_directly_encoded_items_equal_highdicoms(sr_case: tuple[RadiomicsResult, Path]) -> None:
    result, _ = sr_case
    for label in (1, 2):
        direct = sr_measurement_items(result, label)
        reference = [m[0] for m in sr_measurements(result, label)]
        assert len(direct) == len(reference) > 0
        for ours, theirs in zip(direct, reference, strict=True):
            assert ours == theirs


def _algorithm(measurement: hd.sr.Measurement) -> tuple[str, list[str]]:
    """TID 4019 of a measurement: algorithm name and parameters."""
    name, parameters = "", []
    for item in measurement[0].ContentSequence:
        meaning = item.ConceptNameCodeSequence[0].CodeMeaning
        if meaning == "Algorithm Name":
            name = str(item.TextValue)
        elif meaning == "Algorithm Parameters":
            parameters.append(str(item.TextValue))
    return name, parameters


def test_table_files_round_trip(sr_case: tuple[RadiomicsResult, Path], tmp_path: Path) -> None:
    result, _ = sr_case
    write_radiomics(tmp_path, result)
    document = json.loads((tmp_path / JSON_FILE).read_text())
    assert document == json.loads(json.dumps(result.to_json()))
    rows = list(csv.DictReader(io.StringIO((tmp_path / CSV_FILE).read_text())))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == len(result.features)
    first = result.features[0]
    assert float(rows[0]["value"]) == first.value and rows[0]["unit"] == first.unit


# -- HTTP API ----------------------------------------------------------------------------

RULE = {"name": "chest-ct", "match": {"Modality": "CT"}, "plugin": "ct_lungs"}


def _jobs_finished(client, count: int) -> Callable[[], bool]:
    def check() -> bool:
        jobs = client.get("/api/jobs").json()
        return len([j for j in jobs if j["state"] in ("done", "failed", "skipped")]) == count

    return check


@pytest.mark.slow
def test_api_serves_radiomics_as_json_and_csv_across_restarts(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    templates = tmp_path_factory.mktemp("templates")
    radiomics_template(templates, {1: ["firstorder", "shape", "glcm"], 2: ["firstorder"]})
    chest, _ = make_chest_ct(n_slices=24, rows=96, columns=96, seed=11)
    head, _ = make_chest_ct(
        n_slices=8, rows=32, columns=32, seed=12, series_description="Head", include_lungs=False
    )
    root = tmp_path_factory.mktemp("series")
    files = write_series(chest, root / "chest") + write_series(head, root / "head")
    data_dir = tmp_path_factory.mktemp("node")
    config = {"rules": [RULE], "templates_dir": str(templates)}
    with served_node(data_dir, config) as served:
        storescu(served.dicom_port, files)
        with served.client(served.viewer_token) as client:
            wait_until(_jobs_finished(client, 2), 180, message="both jobs finished")
            jobs = {j["state"]: j for j in client.get("/api/jobs").json()}
            done, failed = jobs["done"], jobs["skipped"]  # the head series: too few slices
            first = _check_api(served, client, done["id"], failed["id"])
    with served_node(data_dir, config) as again, again.client(again.viewer_token) as client:
        response = client.get(f"/api/jobs/{done['id']}/radiomics")
        assert response.status_code == 200
        assert response.json() == first


def _check_api(served: ServedNode, client, job_id: int, failed_id: int) -> dict:
    response = client.get(f"/api/jobs/{job_id}/radiomics")
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["job_id"] == job_id and document["template"] == "ct_lungs"
    per_segment = {
        label: [r for r in document["features"] if r["label_value"] == label] for label in (1, 2)
    }
    counts = FEATURE_COUNTS
    assert len(per_segment[1]) == counts["firstorder"] + counts["shape"] + counts["glcm"]
    assert len(per_segment[2]) == counts["firstorder"]
    volume = next(r for r in per_segment[1] if r["feature"] == "MeshVolume")
    assert volume["unit"] == "mm3" and volume["code_value"] == "RNU0" and volume["value"] > 0
    mean = next(r for r in per_segment[2] if r["feature"] == "Mean")
    assert mean["unit"] == "[hnsf'U]" and mean["segment"] == "Left lung"
    assert mean["value"] < -500  # aerated lung
    assert len(document["parameters_sha256"]) == 64

    as_csv = client.get(f"/api/jobs/{job_id}/radiomics", params={"format": "csv"})
    assert as_csv.status_code == 200
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert f"job-{job_id}-radiomics.csv" in as_csv.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert len(rows) == len(document["features"])
    assert {(r["label_value"], r["feature_class"], r["feature"], r["unit"]) for r in rows} == {
        (str(r["label_value"]), r["feature_class"], r["feature"], r["unit"])
        for r in document["features"]
    }

    page = client.get(f"/jobs/{job_id}", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert f'href="/api/jobs/{job_id}/radiomics?format=csv"' in page.text
    assert "/radiomics" not in client.get(f"/jobs/{failed_id}").text

    wrong = client.get(f"/api/jobs/{job_id}/radiomics", params={"format": "xml"})
    assert wrong.status_code == 422 and "format" in wrong.json()["message"]
    no_results = client.get(f"/api/jobs/{failed_id}/radiomics")
    assert no_results.status_code == 404 and "no results" in no_results.json()["message"]
    assert client.get("/api/jobs/99999/radiomics").status_code == 404
    with served.client() as anonymous:
        assert anonymous.get(f"/api/jobs/{job_id}/radiomics").status_code == 401
    return document


# -- installation ------------------------------------------------------------------------


@pytest.mark.slow
def test_radiomics_sr_arrives_in_orthanc(tmp_path: Path) -> None:
    """Orthanc sends a chest CT; the SEG and the SR with the features come back to it."""
    templates = tmp_path / "templates"
    templates.mkdir()
    radiomics_template(templates, {1: ["firstorder", "shape"], 2: ["firstorder"]})
    chest, _ = make_chest_ct(n_slices=24, rows=96, columns=96, seed=11)
    files = write_series(chest, tmp_path / "chest")
    study_uid = str(chest[0].StudyInstanceUID)
    with orthanc_for_node(tmp_path) as (pacs, node_port):
        config = {**node_config(node_port, pacs, [RULE]), "templates_dir": str(templates)}
        with NodeProcess(config, workdir=tmp_path / "node"):
            upload_many(pacs.client, files)
            send_to_modality(pacs.client, "ainode", [lookup_study(pacs.client, study_uid)])
            found = one_result_each(pacs, study_uid, ["SEG", "SR"])
    path = tmp_path / "sr.dcm"
    found["SR"].save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    report = hd.sr.srread(path)
    features = {
        str(group.tracking_identifier): [
            m for m in group.get_measurements() if _algorithm(m)[0] == "pyradiomics"
        ]
        for group in report.content.get_volumetric_roi_measurement_groups()  # type: ignore[attr-defined]
    }
    counts = FEATURE_COUNTS
    assert len(features["right-lung"]) == counts["firstorder"] + counts["shape"]
    assert len(features["left-lung"]) == counts["firstorder"]
    referenced = {
        str(element.value)
        for element in report.iterall()
        if element.keyword == "ReferencedSOPInstanceUID"
    }
    assert str(found["SEG"].SOPInstanceUID) in referenced  # the groups' segments


def test_make_installs_the_radiomics_extra_without_build_isolation() -> None:
    import tomllib

    import radiomics

    root = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras["radiomics"] == ["pyradiomics==3.0.1"]
    assert not any("radiomics" in requirement for requirement in extras["dev"])
    assert str(radiomics.__version__).removeprefix("v") == "3.0.1"
    makefile = (root / "Makefile").read_text()
    recipe = makefile[makefile.index("define install_radiomics") :]
    recipe = recipe[: recipe.index("endef")]
    assert "versioneer" in recipe
    assert "--no-build-isolation -e '.[radiomics]'" in recipe
    for target in ("$(VENV)/.installed-run:", "$(VENV)/.installed-dev:"):
        body = makefile[makefile.index(target) :].split("\n\n")[0]
        assert "$(install_radiomics)" in body, target
