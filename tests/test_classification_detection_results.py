"""Classification and detection results: template format 3, SR, GSPS, SC, KO, worker, Orthanc.

Every new object is checked with dciodvfy (0 errors) and the viewer lint
(:mod:`tools.lint_templates`), the SR with dcmtk's dsrdump, and highdicom reads back the
coded values, probabilities, scores and coordinates exactly. The sources are the
synthetic chest CT (slices) and synthetic 2D images from the shared 2D writer (a
MONOCHROME1 CR, an MG and an OP colour photograph). The end-to-end test runs a test
plugin in the node against a real Orthanc.
"""

from __future__ import annotations

import copy
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset

from node.contract.assemble import assemble_volume
from node.contract.kinds import file_tag
from node.contract.plugin import (
    Accepts,
    Classification,
    Detection,
    InferencePlugin,
    Prediction,
    RunContext,
)
from node.contract.template import ResultTemplate
from node.contract.volume import Volume
from node.errors import TemplateError
from node.results import build_results, load_template
from node.results.findings import ImageFindings
from node.results.sr.findings import CERTAINTY_OF_FINDING, PROBABILITY
from node.results.uids import ResultUIDs
from tests.support.validators import dcentvfy_output, dciodvfy_errors, dsrdump
from tests.support.worker import run_one_job
from tools.lint_templates import lint_results
from tools.orthanc_rest import find_series, lookup_study, send_to_modality, upload_many
from tools.synthetic.chest_ct import make_chest_ct, write_series
from tools.synthetic.projection import SeriesIdentity, cr_image, dx_image, mg_image, op_image

TEMPLATES = Path(__file__).parent / "data" / "templates"
CAD = TEMPLATES / "cad_findings.yaml"

PRESENT = ("52101004", "SCT")
ABSENT = ("272519000", "SCT")


@pytest.fixture(scope="module")
def template() -> ResultTemplate:
    return load_template(CAD)


@pytest.fixture(scope="module")
def ct_volume() -> Volume:
    datasets, _ = make_chest_ct(
        n_slices=12, rows=96, columns=96, pixel_spacing_mm=4.0, slice_thickness_mm=10.0, seed=3
    )
    return assemble_volume(datasets)


def ct_prediction() -> Prediction:
    """Values exactly representable in float32 so SCOORD read-back is exact."""
    return Prediction(
        classifications=[
            Classification("nodule_present", 0.8125),
            Classification("image_abnormal", 0.125, frame=3),
            Classification("image_abnormal", 0.75, frame=5),
        ],
        detections=[
            Detection("nodule", 0.625, 7, box=(30.0, 30.0, 40.0, 38.5)),
            Detection("nodule", 0.9375, 5, box=(10.0, 12.0, 20.5, 25.0)),
            Detection("nodule", 0.125, 5, box=(1.0, 1.0, 3.0, 3.0)),  # below 0.25: left out
            Detection("calcification", 0.5, 5, point=(40.0, 20.0)),
        ],
    )


def save(tmp_path: Path, tag: str, dataset: Dataset) -> Path:
    path = tmp_path / f"{tag}_{dataset.SOPInstanceUID}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def assert_valid(tmp_path: Path, objects: list[tuple[str, Dataset]]) -> dict[str, list[Path]]:
    """dciodvfy reports no error on any object; files by tag."""
    files: dict[str, list[Path]] = {}
    for tag, dataset in objects:
        path = save(tmp_path, tag, dataset)
        assert dciodvfy_errors(path) == [], (tag, dciodvfy_errors(path))
        files.setdefault(tag, []).append(path)
    return files


def read_report(path: Path) -> hd.sr.MeasurementReport:
    return hd.sr.srread(path).content  # type: ignore[no-any-return]


def code(concept: Any) -> tuple[str, str]:
    return (str(concept.value), str(concept.scheme_designator))


# -- template format 3 -------------------------------------------------------------------


def test_cad_template_loads_with_its_classifications_and_detections(
    template: ResultTemplate,
) -> None:
    assert template.document.format_version == 3 and template.segments == ()
    series, per_image = template.classifications
    assert (series.key, series.threshold, series.unit, series.per_image) == (
        "nodule_present",
        0.5,
        "1",
        False,
    )
    assert (per_image.display_label, per_image.unit, per_image.per_image) == (
        "Abnormal image",
        "%",
        True,
    )
    nodule, calcification = template.detections
    assert nodule.report_threshold == 0.25 and nodule.colour == [255, 200, 0]
    assert calcification.scoord3d and calcification.report_threshold == 0.0
    assert template.detection("nodule").concept.value == "27925004"


def _change(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(document: dict[str, Any]) -> None:
        target: Any = document
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return apply


_DELETE = object()

BROKEN = {
    "classifications in format 2": (
        _change(["format_version"], 2),
        "classifications: classifications need format_version 3",
    ),
    "threshold above 1": (
        _change(["classifications", 0, "threshold"], 1.5),
        "classifications[0].threshold: Input should be less than or equal to 1",
    ),
    "present code missing": (
        _change(["classifications", 0, "present"], _DELETE),
        "classifications[0].present: required key is missing",
    ),
    "absent equals present": (
        _change(
            ["classifications", 0, "absent"],
            {"value": "52101004", "scheme": "SCT", "meaning": "Present"},
        ),
        "classifications[0].absent: must be a different code than 'present'",
    ),
    "probability in cm": (
        _change(["classifications", 1, "unit"], "cm"),
        "classifications[1].unit: Input should be '1' or '%'",
    ),
    "wrong meaning": (
        _change(["detections", 0, "concept", "meaning"], "Mass"),
        "detections[0].concept.meaning: SCT 27925004 means 'Nodule'",
    ),
    "category outside CID 7150": (
        _change(
            ["detections", 0, "category"],
            {"value": "39607008", "scheme": "SCT", "meaning": "Lung"},
        ),
        "detections[0].category.value: (SCT, 39607008) is not in DICOM CID 7150",
    ),
    "key shared by a classification and a detection": (
        _change(["detections", 1, "key"], "nodule_present"),
        "detections[1].key: duplicate 'nodule_present' (also classifications[0]",
    ),
    "colour out of range": (
        _change(["detections", 1, "colour"], [0, 0, 256]),
        "detections[1].colour[2]: Input should be less than or equal to 255",
    ),
    "measurements without segments": (
        lambda d: (
            d.pop("classifications"),
            d.pop("detections"),
            d.update(
                measurements=[
                    {
                        "key": "volume_cm3",
                        "concept": {"value": "118565006", "scheme": "SCT", "meaning": "Volume"},
                        "unit": "cm3",
                        "compute": "volume",
                    }
                ]
            ),
        ),
        "segments: at least 1 item is needed for measurements and findings",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_format_3_template_names_file_path_and_reason(case: str, tmp_path: Path) -> None:
    change, message = BROKEN[case]
    document = copy.deepcopy(yaml.safe_load(CAD.read_text()))
    change(document)
    path = tmp_path / "cad_findings.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    with pytest.raises(TemplateError) as raised:
        load_template(path)
    assert f"{path}: " in str(raised.value)
    assert message in str(raised.value)


def test_format_2_templates_need_a_segment_to_measure(tmp_path: Path) -> None:
    # Without segments a format 2 template may only name an algorithm (a registration's
    # does); measurements and findings need segments.
    document = yaml.safe_load((TEMPLATES / "mr_lesion.yaml").read_text())
    document["segments"] = []
    path = tmp_path / "mr_lesion.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(TemplateError, match=r"segments: at least 1 item is needed for measurem"):
        load_template(path)


# -- the prediction checked against the template ---------------------------------------


def findings_of(volume: Volume, template: ResultTemplate, prediction: Prediction) -> ImageFindings:
    return ImageFindings(volume, prediction, template, ResultUIDs.for_volume(volume, template))


def test_present_or_absent_numbering_and_report_threshold(
    ct_volume: Volume, template: ResultTemplate
) -> None:
    findings = findings_of(ct_volume, template, ct_prediction())
    series, low, high = findings.classifications
    assert (series.frame, series.present, series.value.value) == (None, True, "52101004")
    assert (low.frame, low.present, low.reported_probability) == (3, False, 12.5)
    assert (high.frame, high.present) == (5, True)
    # threshold is inclusive
    assert not findings_of(ct_volume, template, Prediction())
    at = findings_of(
        ct_volume, template, Prediction(classifications=[Classification("nodule_present", 0.5)])
    )
    assert at.classifications[0].present
    assert [(d.tracking_id, d.score, d.frame) for d in findings.detections] == [
        ("nodule 1", 0.9375, 5),
        ("nodule 2", 0.625, 7),
        ("calcification 1", 0.5, 5),
    ]
    assert findings.suppressed == 1
    assert findings.frames == [0, 3, 5, 7]
    assert findings.texts_on(5) == ["Nodule: Present (0.81)", "Abnormal image: Present (75 %)"]
    assert len({d.tracking_uid for d in findings.detections}) == 3
    again = findings_of(ct_volume, template, ct_prediction())
    assert [d.tracking_uid for d in again.detections] == [
        d.tracking_uid for d in findings.detections
    ]


@pytest.mark.parametrize(
    ("prediction", "message"),
    [
        (
            Prediction(classifications=[Classification("pneumothorax", 0.5)]),
            "classifications[0] ('pneumothorax'): not a classification the template declares",
        ),
        (
            Prediction(classifications=[Classification("image_abnormal", 0.5)]),
            "a per-image classification needs its frame",
        ),
        (
            Prediction(classifications=[Classification("nodule_present", 0.5, frame=1)]),
            "a series-level classification has no frame",
        ),
        (
            Prediction(
                classifications=[
                    Classification("image_abnormal", 0.5, frame=1),
                    Classification("image_abnormal", 0.6, frame=1),
                ]
            ),
            "classifications[1] ('image_abnormal'): given twice",
        ),
        (
            Prediction(detections=[Detection("nodule", 0.5, 12, point=(1.0, 1.0))]),
            "frame 12 is outside the series' 12 images",
        ),
        (
            Prediction(detections=[Detection("nodule", 0.5, 0, box=(90.0, 1.0, 96.5, 4.0))]),
            "box (90.0, 1.0, 96.5, 4.0) is outside the 96x96 image",
        ),
        (
            Prediction(detections=[Detection("mass", 0.5, 0, point=(1.0, 1.0))]),
            "not a detection the template declares (declared: ['calcification', 'nodule'])",
        ),
    ],
)
def test_a_prediction_that_does_not_fit_is_named(
    ct_volume: Volume, template: ResultTemplate, prediction: Prediction, message: str
) -> None:
    with pytest.raises(TemplateError) as raised:
        findings_of(ct_volume, template, prediction)
    assert message in str(raised.value)


# -- objects on CT ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct_results(
    ct_volume: Volume, template: ResultTemplate, tmp_path_factory: pytest.TempPathFactory
):
    results = build_results(
        ct_volume, ct_prediction(), template, tags={"sr", "gsps", "sc", "ko.gsps+sc+sr"}
    )
    directory = tmp_path_factory.mktemp("ct")
    assert lint_results(ct_volume.datasets, results.datasets) == []
    return results, assert_valid(directory, results.tagged())


def test_ct_objects_pass_dciodvfy_and_dsrdump(ct_results) -> None:
    results, files = ct_results
    assert set(files) == {"sr", "gsps", "sc", "ko.gsps+sc+sr"}
    assert "seg" not in results.objects  # no label map, no SEG
    assert len(files["sc"]) == 4  # first image (series finding) + frames 3, 5, 7
    dump = dsrdump(files["sr"][0])
    assert dump.returncode == 0, dump.stderr
    for text in ('"Probability"', '"Certainty of Finding"', "SCOORD3D", "(POLYLINE", "Present"):
        assert text in dump.stdout, text
    sr = pydicom.dcmread(files["sr"][0])
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert [item.SeriesInstanceUID for item in evidence] == [results.uids.input_key[0]]


def test_dcentvfy_finds_no_errors_across_source_and_results(
    ct_results: tuple[Any, dict[str, list[Path]]], tmp_path: Path
) -> None:
    datasets, _ = make_chest_ct(
        n_slices=12, rows=96, columns=96, pixel_spacing_mm=4.0, slice_thickness_mm=10.0, seed=3
    )
    sources = write_series(datasets, tmp_path / "source")
    _, files = ct_results
    report = dcentvfy_output([*sources, *(p for paths in files.values() for p in paths)])
    assert [line for line in report if line.startswith("Error")] == []
    # dcentvfy puts AccessionNumber in the Series IE of CT but the Study IE of others
    others = [line for line in report if line.strip() and "AccessionNumber" not in line]
    assert others == []


def test_sr_reads_back_classifications_exactly(ct_results, ct_volume: Volume) -> None:
    _, files = ct_results
    report = read_report(files["sr"][0])
    groups = report.get_image_measurement_groups()
    assert [g.tracking_identifier for g in groups] == [
        "nodule_present",
        f"image_abnormal image {ct_volume.datasets[3].InstanceNumber}",
        f"image_abnormal image {ct_volume.datasets[5].InstanceNumber}",
    ]
    expected = [(0.8125, "1", PRESENT, None), (12.5, "%", ABSENT, 3), (75.0, "%", PRESENT, 5)]
    for group, (value, unit, answer, frame) in zip(groups, expected, strict=True):
        (probability,) = group.get_measurements(name=PROBABILITY)
        assert probability.value == value
        assert probability.unit.value == unit
        (evaluation,) = group.get_qualitative_evaluations()
        assert code(evaluation.value) == answer
        assert code(evaluation.name) == code(group.finding_type)
        sources = group.source_images
        if frame is None:
            assert sources == []
        else:
            (source,) = sources
            assert source.referenced_sop_instance_uid == ct_volume.datasets[frame].SOPInstanceUID
        parameters = [
            str(item.TextValue) for item in group[0].ContentSequence if item.ValueType == "TEXT"
        ]
        assert any(p.startswith("template_sha256=") for p in parameters)
        assert any(p.startswith("threshold=") for p in parameters)
    assert [site.value for site in groups[0].finding_sites] == [
        hd.sr.CodedConcept("39607008", "SCT", "Lung")
    ]


def test_sr_reads_back_detections_exactly(ct_results, ct_volume: Volume) -> None:
    _, files = ct_results
    report = read_report(files["sr"][0])
    groups = report.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["nodule 1", "nodule 2", "calcification 1"]
    assert len({g.tracking_uid for g in groups}) == 3
    first, second, point = groups
    assert first.reference_type == hd.sr.CodedConcept("111030", "DCM", "Image Region")
    roi = first.roi
    assert isinstance(roi, hd.sr.ImageRegion)
    assert roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    assert roi.value.tolist() == [[10, 12], [20.5, 12], [20.5, 25], [10, 25], [10, 12]]
    (source,) = roi.ContentSequence
    assert source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        ct_volume.datasets[5].SOPInstanceUID
    )
    (score,) = first.get_measurements(name=CERTAINTY_OF_FINDING)
    assert score.value == 0.9375 and score.unit.value == "1"
    assert code(first.finding_type) == ("27925004", "SCT")
    assert second.roi.value.tolist()[2] == [40, 38.5]
    # SCOORD3D: the point's patient position (pixel centre (0.5, 0.5) at ImagePositionPatient)
    three_d = point.roi
    assert isinstance(three_d, hd.sr.ImageRegion3D)
    assert three_d.graphic_type == hd.sr.GraphicTypeValues3D.POINT
    image = ct_volume.datasets[5]
    origin = np.asarray([float(v) for v in image.ImagePositionPatient])
    spacing = float(image.PixelSpacing[0])
    expected = origin + np.asarray([39.5 * spacing, 19.5 * spacing, 0.0])
    assert np.allclose(three_d.value[0], expected, atol=1e-4)
    assert three_d.frame_of_reference_uid == image.FrameOfReferenceUID


def test_gsps_draws_boxes_points_and_texts_on_their_images(ct_results, ct_volume: Volume) -> None:
    _, files = ct_results
    gsps = pydicom.dcmread(files["gsps"][0])
    assert gsps.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.1"
    layers = {layer.GraphicLayer: layer for layer in gsps.GraphicLayerSequence}
    assert set(layers) == {"DETECTION_1", "DETECTION_2", "CLASSIFICATION"}
    assert layers["DETECTION_1"].GraphicLayerDescription == "Nodule"
    by_image: dict[str, list[Dataset]] = {}
    for annotation in gsps.GraphicAnnotationSequence:
        (image,) = annotation.ReferencedImageSequence
        by_image.setdefault(str(image.ReferencedSOPInstanceUID), []).append(annotation)
    uid = {k: str(ct_volume.datasets[k].SOPInstanceUID) for k in (0, 3, 5, 7)}
    assert set(by_image) == set(uid.values())
    nodules = next(a for a in by_image[uid[5]] if a.GraphicLayer == "DETECTION_1")
    (box,) = nodules.GraphicObjectSequence
    assert box.GraphicType == "POLYLINE" and box.TrackingID == "nodule 1"
    assert list(box.GraphicData) == [10, 12, 20.5, 12, 20.5, 25, 10, 25, 10, 12]
    assert nodules.TextObjectSequence[0].UnformattedTextValue == "Nodule 1: 0.94"
    calcification = next(a for a in by_image[uid[5]] if a.GraphicLayer == "DETECTION_2")
    assert [g.GraphicType for g in calcification.GraphicObjectSequence] == ["CIRCLE", "POINT"]
    texts = next(a for a in by_image[uid[3]] if a.GraphicLayer == "CLASSIFICATION")
    assert [t.UnformattedTextValue for t in texts.TextObjectSequence] == [
        "Nodule: Present (0.81)",
        "Abnormal image: Absent (12 %)",
    ]


def test_sc_burns_the_box_in_and_says_not_for_diagnostic_use(ct_results, ct_volume: Volume) -> None:
    results, files = ct_results
    captures = {
        str(pydicom.dcmread(p).SourceImageSequence[0].ReferencedSOPInstanceUID): pydicom.dcmread(p)
        for p in files["sc"]
    }
    capture = captures[str(ct_volume.datasets[5].SOPInstanceUID)]
    assert capture.BurnedInAnnotation == "YES"
    assert "NOT FOR DIAGNOSTIC USE" in capture.SeriesDescription
    pixels = capture.pixel_array
    # the nodule box's left edge (column 10, rows 12-24) is drawn in its colour
    assert (pixels[14:24, 10] == [255, 200, 0]).all()
    # the KO lists SR, GSPS and the captures
    (ko,) = results.objects["ko.gsps+sc+sr"]
    listed = {
        str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for item in ko.ContentSequence
        if item.ValueType in ("IMAGE", "COMPOSITE")
    }
    assert len(listed) == 1 + 1 + 4


# -- segmentation and detections together ------------------------------------------------


def test_label_map_and_detections_in_one_result(tmp_path: Path) -> None:
    document = yaml.safe_load(CAD.read_text())
    lesion = yaml.safe_load((TEMPLATES / "mr_lesion.yaml").read_text())
    document["segments"] = lesion["segments"][:1]
    document["name"] = "mixed"
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(document))
    template = load_template(path)
    datasets, _ = make_chest_ct(n_slices=6, rows=64, columns=64, pixel_spacing_mm=6.0, seed=4)
    volume = assemble_volume(datasets)
    label_map = np.zeros(volume.shape, dtype=np.uint8)
    label_map[2:4, 20:40, 20:40] = 1
    prediction = Prediction(
        label_map=label_map,
        detections=[Detection("nodule", 0.75, 2, box=(22.0, 22.0, 30.0, 30.0))],
    )
    results = build_results(volume, prediction, template, tags={"seg", "sr", "gsps", "sc"})
    assert lint_results(volume.datasets, results.datasets) == []
    files = assert_valid(tmp_path, results.tagged())
    report = read_report(files["sr"][0])
    assert len(report.get_volumetric_roi_measurement_groups()) == 1
    planar = [g.tracking_identifier for g in report.get_planar_roi_measurement_groups()]
    assert planar == ["brain outline", "nodule 1"]
    gsps = pydicom.dcmread(files["gsps"][0])
    assert {layer.GraphicLayer for layer in gsps.GraphicLayerSequence} == {
        "SEGMENT_1",
        "DETECTION_1",
    }
    assert len(files["sc"]) == 2  # the slices with the segment; the box is on one of them


# -- build_results without a label map --------------------------------------------------


def test_no_label_map_gives_sr_only_and_refuses_a_seg(
    ct_volume: Volume, template: ResultTemplate
) -> None:
    prediction = Prediction(classifications=[Classification("nodule_present", 0.25)])
    results = build_results(ct_volume, prediction, template)
    assert list(results.objects) == ["sr"]
    for tag in ("seg", "fractional_seg", "labelmap_seg"):
        with pytest.raises(TemplateError, match=f"gives no label map, so no {tag} can be built"):
            build_results(ct_volume, prediction, template, tags={tag, "sr"})
    # an SR tag's SEG qualifier and a KO that lists a SEG: what exists is built and listed
    results = build_results(
        ct_volume, prediction, template, tags={"sr.fractional_seg", "ko.seg+sr"}
    )
    assert set(results.objects) == {"sr.fractional_seg", "sr", "ko.seg+sr"}
    (ko,) = results.objects["ko.seg+sr"]
    assert ko.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[
        0
    ].SeriesInstanceUID == (results.objects["sr"][0].SeriesInstanceUID)


def test_a_label_map_needs_segments(ct_volume: Volume, template: ResultTemplate) -> None:
    prediction = Prediction(label_map=np.zeros(ct_volume.shape, dtype=np.uint8))
    with pytest.raises(TemplateError, match="the template declares no segments"):
        build_results(ct_volume, prediction, template)


# -- 2D images ---------------------------------------------------------------------------


def _bright_square(rows: int, columns: int, high: int) -> np.ndarray:
    pixels = np.full((rows, columns), 400, dtype=np.uint16)
    pixels[40:60, 50:70] = high
    return pixels


def two_d_volume(kind: str, tmp_path: Path) -> Volume:
    identity = SeriesIdentity()
    if kind == "cr-monochrome1":
        # MONOCHROME1: low stored values are bright; the square is bright on display
        pixels = np.full((128, 160), 3600, dtype=np.uint16)
        pixels[40:60, 50:70] = 300
        dataset = cr_image(pixels, pixel_spacing_mm=0.5, identity=identity)
    elif kind == "dx-monochrome1":
        pixels = np.full((128, 160), 3600, dtype=np.uint16)
        pixels[40:60, 50:70] = 300
        dataset = dx_image(
            pixels, imager_pixel_spacing_mm=0.2, photometric="MONOCHROME1", identity=identity
        )
    elif kind == "mg":
        dataset = mg_image(
            _bright_square(128, 160, 3600),
            laterality="L",
            view="MLO",
            imager_pixel_spacing_mm=0.1,
            identity=identity,
        )
    else:
        rgb = np.zeros((128, 160, 3), dtype=np.uint8)
        rgb[..., 0] = 120
        rgb[40:60, 50:70] = 250
        dataset = op_image(rgb, laterality="R", identity=identity)
    path = tmp_path / f"{kind}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return assemble_volume([pydicom.dcmread(path)])


@pytest.mark.parametrize("kind", ["cr-monochrome1", "dx-monochrome1", "mg", "op-rgb"])
def test_2d_images_get_valid_sr_presentation_state_and_capture(
    kind: str, tmp_path: Path, template: ResultTemplate
) -> None:
    volume = two_d_volume(kind, tmp_path)
    assert volume.is_2d and volume.shape == (1, 128, 160)
    prediction = Prediction(
        classifications=[
            Classification("nodule_present", 0.875),
            Classification("image_abnormal", 0.5, frame=0),
        ],
        detections=[
            Detection("nodule", 0.75, 0, box=(50.0, 40.0, 70.0, 60.0)),
            Detection("calcification", 0.5, 0, point=(100.0, 20.0)),
        ],
    )
    results = build_results(volume, prediction, template, tags={"sr", "gsps", "sc"})
    assert lint_results(volume.datasets, results.datasets) == []
    files = assert_valid(tmp_path, results.tagged())
    assert dsrdump(files["sr"][0]).returncode == 0
    report = read_report(files["sr"][0])
    nodule, calcification = report.get_planar_roi_measurement_groups()
    assert nodule.roi.value.tolist() == [[50, 40], [70, 40], [70, 60], [50, 60], [50, 40]]
    # no ImagePositionPatient: the SCOORD3D request falls back to SCOORD on the image
    assert isinstance(calcification.roi, hd.sr.ImageRegion)
    assert calcification.roi.value.tolist() == [[100, 20]]
    state = pydicom.dcmread(files["gsps"][0])
    source = volume.datasets[0]
    if kind == "op-rgb":
        assert state.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.2"  # Color Softcopy PS
    else:
        assert state.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.1"
        expected = "INVERSE" if source.PhotometricInterpretation == "MONOCHROME1" else "IDENTITY"
        assert state.PresentationLUTShape == expected
    (capture,) = results.objects["sc"]
    pixels = capture.pixel_array
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    # the square is bright on display (MONOCHROME1 shown as its modality shows it)
    inside = pixels[45:55, 55:65].mean()
    outside = pixels[90:110, 100:140].mean()
    assert inside > outside + 50, (inside, outside)
    if kind == "mg":
        assert list(capture.PatientOrientation) == list(source.PatientOrientation)


def test_multi_frame_image_references_its_frame(tmp_path: Path, template: ResultTemplate) -> None:
    frames = np.zeros((3, 64, 80, 3), dtype=np.uint8)
    frames[..., 1] = 90
    dataset = op_image(frames, laterality="L", identity=SeriesIdentity())
    path = tmp_path / "op-multi.dcm"
    dataset.save_as(path, enforce_file_format=True)
    volume = assemble_volume([pydicom.dcmread(path)])
    assert volume.shape == (3, 64, 80)
    prediction = Prediction(
        classifications=[Classification("image_abnormal", 0.625, frame=1)],
        detections=[Detection("nodule", 0.75, 2, box=(10.0, 10.0, 30.0, 20.0))],
    )
    results = build_results(volume, prediction, template, tags={"sr", "gsps", "sc"})
    assert lint_results(volume.datasets, results.datasets) == []
    files = assert_valid(tmp_path, results.tagged())
    dump = dsrdump(files["sr"][0]).stdout
    assert dump.count('IMAGE:(,,"Source")=(OPb image,)') == 1  # Image Library: once
    report = read_report(files["sr"][0])
    (group,) = report.get_planar_roi_measurement_groups()
    (source,) = group.roi.ContentSequence
    assert source.ReferencedSOPSequence[0].ReferencedFrameNumber == 3
    (image_group,) = report.get_image_measurement_groups()
    assert image_group.source_images[0].referenced_frame_numbers == [2]
    assert image_group.tracking_identifier == "image_abnormal image 1 frame 2"
    state = pydicom.dcmread(files["gsps"][0])
    annotated = {
        (a.GraphicLayer, int(a.ReferencedImageSequence[0].ReferencedFrameNumber))
        for a in state.GraphicAnnotationSequence
    }
    assert annotated == {("DETECTION_1", 3), ("CLASSIFICATION", 2)}
    captures = sorted(
        int(c.SourceImageSequence[0].ReferencedFrameNumber) for c in results.objects["sc"]
    )
    assert captures == [2, 3]


# -- worker and Orthanc end to end ------------------------------------------------------


class CadPlugin(InferencePlugin):
    """Test plugin: a series-level and per-slice classification, two boxes, one point."""

    name = "test_cad"
    version = "0.1.0"
    template = "cad_findings"
    accepts = Accepts(modalities=("CT",))

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        middle = volume.shape[0] // 2
        return Prediction(
            classifications=[
                Classification("nodule_present", 0.875),
                Classification("image_abnormal", 0.75, frame=middle),
            ],
            detections=[
                Detection("nodule", 0.875, middle, box=(20.0, 24.0, 36.0, 40.0)),
                Detection("nodule", 0.5, middle + 1, box=(50.0, 50.0, 60.0, 62.0)),
                Detection("calcification", 0.625, middle, point=(48.0, 30.0)),
            ],
        )


def _events(database_path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(database_path) as db:
        return list(db.execute("SELECT event, detail FROM job_events ORDER BY id"))


def test_worker_skips_seg_kinds_with_a_job_event(database, clock, tmp_path: Path) -> None:
    datasets, _ = make_chest_ct(n_slices=8, rows=64, columns=64, pixel_spacing_mm=6.0, seed=5)
    job = run_one_job(
        database, clock, tmp_path, datasets, CadPlugin, rule="cad", templates_dir=TEMPLATES
    )
    assert job.plugin == "test_cad"
    assert {file_tag(p.name) for p in Path(job.result_dir).glob("*.dcm")} == {"sr"}
    skipped = [detail for event, detail in _events(database.path) if event == "results_skipped"]
    assert skipped == ["seg: the routine gives no label map"]


@pytest.mark.slow
def test_classifier_detector_results_arrive_in_orthanc(tmp_path: Path) -> None:
    """A CT goes from Orthanc to the node; the test routine's SR and GSPS come back.

    The destination asks for SEG + SR + GSPS: the SEG is skipped with a job event
    (the routine gives no label map), the SR and the GSPS arrive and pass dciodvfy.
    """
    from tests.support.net import wait_until
    from tests.support.pacs import one_result_each, orthanc_and_node

    rule = {"name": "cad", "match": {"Modality": "CT"}, "plugin": "test_cad"}
    with orthanc_and_node(
        tmp_path,
        [rule],
        plugins=[CadPlugin],
        templates_dir=TEMPLATES,
        results=["seg", "sr", "gsps"],
    ) as (pacs, node):
        database_path = node.settings.database_path
        datasets, _ = make_chest_ct(n_slices=16, rows=96, columns=96, pixel_spacing_mm=4.0, seed=21)
        files = write_series(datasets, tmp_path / "series")
        upload_many(pacs.client, files)
        study_uid = str(datasets[0].StudyInstanceUID)
        send_to_modality(pacs.client, "ainode", [lookup_study(pacs.client, study_uid)])
        objects = one_result_each(pacs, study_uid, ["SR", "PR"], timeout=240)
        assert not find_series(pacs.client, study_uid, "SEG")
        wait_until(lambda: any(e == "done" for e, _ in _events(database_path)), timeout=30)
        events = _events(database_path)
    assert ("results_skipped", "seg: the routine gives no label map") in events
    for modality, dataset in objects.items():
        path = tmp_path / f"{modality}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], modality
    report = read_report(tmp_path / "SR.dcm")
    middle = 8
    (box, second, point) = report.get_planar_roi_measurement_groups()
    assert (box.tracking_identifier, second.tracking_identifier) == ("nodule 1", "nodule 2")
    assert box.roi.value.tolist() == [[20, 24], [36, 24], [36, 40], [20, 40], [20, 24]]
    (source,) = box.roi.ContentSequence
    by_uid = {str(d.SOPInstanceUID): d for d in datasets}
    referenced = by_uid[str(source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)]
    volume = assemble_volume(datasets)
    assert referenced.SOPInstanceUID == volume.datasets[middle].SOPInstanceUID
    series_group, image_group = report.get_image_measurement_groups()
    (image_source,) = image_group.source_images
    assert image_source.referenced_sop_instance_uid == volume.datasets[middle].SOPInstanceUID
    assert isinstance(point.roi, hd.sr.ImageRegion3D)
    (evaluation,) = series_group.get_qualitative_evaluations()
    assert code(evaluation.value) == PRESENT
    (probability,) = series_group.get_measurements(name=PROBABILITY)
    assert probability.value == 0.875
    gsps = objects["PR"]
    annotated = {
        str(a.ReferencedImageSequence[0].ReferencedSOPInstanceUID)
        for a in gsps.GraphicAnnotationSequence
    }
    expected = {str(volume.datasets[k].SOPInstanceUID) for k in (0, middle, middle + 1)}
    assert annotated == expected
