"""2D images from a real Orthanc through the node and back.

A chest radiograph (DX or CR, MONOCHROME1): the routine defined here reports the
phantom's cardiomegaly as a classification and its nodules as boxes. The destination
takes SR, GSPS and SC; all three arrive in Orthanc, pass dciodvfy, and the SR's boxes are
the phantom's nodules on the radiograph.

With the DX radiograph the same node (a second rule and routine, no extra node start)
also gets a three-frame OP photograph and an MG For Processing image from Orthanc; the
routine puts one box on each frame, and the SR, the (colour) presentation state and the
captures that come back into Orthanc point at the exact frame of each box.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from node.contract.plugin import (
    Accepts,
    Classification,
    Detection,
    InferencePlugin,
    Prediction,
    RunContext,
)
from node.contract.volume import Volume
from tests.support.validators import dciodvfy_errors
from tools.orthanc import OrthancServer
from tools.orthanc_rest import (
    instance_dataset,
    lookup_study,
    send_to_modality,
    upload_many,
    wait_for_series,
)
from tools.synthetic.chest_xray import ChestXrayTruth, make_chest_xray
from tools.synthetic.projection import SeriesIdentity, mg_image, op_image

pytestmark = pytest.mark.slow

TEMPLATE = """\
format_version: 3
name: cxr_findings
description: Chest radiograph findings (test routine, not a clinical model).
algorithm:
  name: ainode-test-cxr
  version: "0.1.0"
  family: {value: "123110", scheme: DCM, meaning: Artificial Intelligence}
  manufacturer: ainode
  device_uid: "2.25.77410932741287401234987120349871234"
output:
  series_description: AI CXR
  content_label: CXR
classifications:
  - key: cardiomegaly
    concept: {value: "8186001", scheme: SCT, meaning: Cardiomegaly}
    present: {value: "52101004", scheme: SCT, meaning: Present}
    absent: {value: "272519000", scheme: SCT, meaning: Absent}
    threshold: 0.5
detections:
  - key: nodule
    concept: {value: "27925004", scheme: SCT, meaning: Nodule}
    finding_site: {value: "39607008", scheme: SCT, meaning: Lung}
    colour: [255, 200, 0]
"""

FRAMES_TEMPLATE = """\
format_version: 3
name: frame_findings
description: One box per frame (test routine, not a clinical model).
algorithm:
  name: ainode-test-frames
  version: "0.1.0"
  family: {value: "123110", scheme: DCM, meaning: Artificial Intelligence}
  manufacturer: ainode
  device_uid: "2.25.301742189274501982374019283740192837412"
output:
  series_description: AI frames
  content_label: FRAMES
detections:
  - key: spot
    concept: {value: "49755003", scheme: SCT, meaning: Morphologically abnormal structure}
    colour: [0, 255, 0]
"""

#: The box the frame routine reports on frame k (x0, y0, x1, y1).
FRAME_BOXES = [(4.0, 6.0, 20.0, 18.0), (24.0, 10.0, 40.0, 30.0), (40.0, 20.0, 60.0, 44.0)]

PHANTOM_SEED = 31


def _truth() -> ChestXrayTruth:
    _, truth = make_chest_xray(
        192, 160, nodules=2, cardiomegaly=True, seed=PHANTOM_SEED, photometric="MONOCHROME1"
    )
    return truth


class ChestFindings(InferencePlugin):
    """Reports what the phantom was drawn with (this tests the node, not a model)."""

    name = "cxr_findings"
    version = "0.1.0"
    template = "cxr_findings"
    accepts = Accepts(
        modalities=("DX", "CR"),
        sop_classes=("DigitalXRayImageStorageForPresentation", "ComputedRadiographyImageStorage"),
        photometric_interpretations=("MONOCHROME1", "MONOCHROME2"),
    )

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        assert volume.is_2d and volume.inverted  # MONOCHROME1 was inverted for the routine
        truth = _truth()
        return Prediction(
            classifications=[Classification("cardiomegaly", 0.9)],
            detections=[
                Detection("nodule", 0.8 - 0.1 * k, 0, box=nodule.box)
                for k, nodule in enumerate(truth.nodules)
            ],
        )


class FrameFindings(InferencePlugin):
    """One box per frame, at :data:`FRAME_BOXES` (tests the frame references, not a model)."""

    name = "frame_findings"
    version = "0.1.0"
    template = "frame_findings"
    accepts = Accepts(
        modalities=("OP", "MG"),
        sop_classes=(
            "OphthalmicPhotography8BitImageStorage",
            "DigitalMammographyXRayImageStorageForProcessing",
        ),
        samples_per_pixel=(1, 3),
    )

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        return Prediction(
            detections=[
                Detection("spot", 0.9 - 0.1 * k, k, box=FRAME_BOXES[k])
                for k in range(volume.shape[0])
            ]
        )


def _frame_images(directory: Path) -> tuple[Path, Path]:
    """A three-frame OP photograph and an MG For Processing image, written to ``directory``."""
    rng = np.random.default_rng(8)
    eye = rng.integers(0, 256, size=(48, 64, 3)).astype(np.uint8)
    photograph = op_image(
        np.stack([eye, eye[::-1], eye[:, ::-1]]), laterality="L", pixel_spacing_mm=0.02
    )
    raw = mg_image(
        rng.integers(200, 3000, size=(96, 64)).astype(np.uint16),
        laterality="R",
        view="MLO",
        imager_pixel_spacing_mm=0.1,
        identity=SeriesIdentity(patient_name="SYNTHETIC^RAWMAMMO", patient_id="SYNRAWMG"),
        intent="FOR PROCESSING",
    )
    paths = []
    for name, dataset in (("op_frames.dcm", photograph), ("mg_raw.dcm", raw)):
        dataset.save_as(directory / name, enforce_file_format=True)
        paths.append(directory / name)
    return paths[0], paths[1]


def _boxes_by_frame(
    report: hd.sr.ComprehensiveSR,
) -> dict[tuple[str, int | None], list[list[float]]]:
    """``(SOP Instance UID, frame number or None)`` -> the SR's box outline there."""
    found = {}
    for group in report.content.get_planar_roi_measurement_groups():
        (reference,) = group.roi.ContentSequence
        (item,) = reference.ReferencedSOPSequence
        frame = item.get("ReferencedFrameNumber")
        key = (str(item.ReferencedSOPInstanceUID), None if frame is None else int(frame))
        found[key] = group.roi.value.tolist()
    return found


def _outline(box: tuple[float, float, float, float]) -> list[list[float]]:
    x0, y0, x1, y1 = box
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _check_frame_results(pacs: OrthancServer, tmp_path: Path, photograph: Path, raw: Path) -> None:
    """SR, presentation state and captures of both images: in Orthanc, dciodvfy-clean and
    pointing at the frame each box is on."""
    tmp_path.mkdir(exist_ok=True)
    for source, frames in ((photograph, 3), (raw, None)):
        image = pydicom.dcmread(source, stop_before_pixels=True)
        # Stable: the captures (one per frame) arrive one after another.
        found = wait_for_series(
            pacs.client, str(image.StudyInstanceUID), ["SR", "PR", "OT"], timeout=240, stable=True
        )
        objects: dict[str, list[pydicom.Dataset]] = {}
        for modality, series in found.items():
            (one,) = series
            objects[modality] = [instance_dataset(pacs.client, i) for i in one["Instances"]]
        for modality, datasets in objects.items():
            for n, dataset in enumerate(datasets):
                path = tmp_path / f"{image.Modality}-{modality}-{n}.dcm"
                dataset.save_as(path, enforce_file_format=True)
                assert dciodvfy_errors(path) == [], (image.Modality, modality)
        assert len(objects["SR"]) == 1
        sr_path = tmp_path / f"{image.Modality}-SR-0.dcm"
        boxes = _boxes_by_frame(hd.sr.srread(sr_path))
        uid = str(image.SOPInstanceUID)
        if frames is None:  # single frame: no frame number in the references
            assert set(boxes) == {(uid, None)}
            np.testing.assert_allclose(boxes[(uid, None)], _outline(FRAME_BOXES[0]), atol=1e-3)
        else:
            assert set(boxes) == {(uid, k + 1) for k in range(frames)}
            for k in range(frames):
                np.testing.assert_allclose(boxes[(uid, k + 1)], _outline(FRAME_BOXES[k]), atol=1e-3)
        (state,) = objects["PR"]
        drawn: dict[int | None, list[float]] = {}
        for annotation in state.GraphicAnnotationSequence:
            (referenced,) = annotation.ReferencedImageSequence
            assert referenced.ReferencedSOPInstanceUID == uid
            frame = referenced.get("ReferencedFrameNumber")
            for graphic in annotation.get("GraphicObjectSequence", []):
                if graphic.GraphicType == "POLYLINE":
                    drawn[None if frame is None else int(frame)] = [
                        float(v) for v in graphic.GraphicData
                    ]
        expected_frames = [None] if frames is None else [k + 1 for k in range(frames)]
        assert sorted(drawn, key=lambda f: f or 0) == expected_frames
        for k, frame in enumerate(expected_frames):
            np.testing.assert_allclose(
                np.reshape(drawn[frame], (-1, 2)), _outline(FRAME_BOXES[k]), atol=1e-3
            )
        assert len(objects["OT"]) == (frames or 1)  # one capture per annotated frame
        if frames is not None:
            assert state.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.2"  # colour (RGB source)


@pytest.mark.parametrize("modality", ["DX", "CR"])
def test_chest_radiograph_findings_arrive_in_orthanc(tmp_path: Path, modality: str) -> None:
    from tests.support.pacs import orthanc_and_node

    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "cxr_findings.yaml").write_text(TEMPLATE)
    (templates / "frame_findings.yaml").write_text(FRAMES_TEMPLATE)
    # Multi-frame and For Processing images ride along with one of the two runs.
    extras = _frame_images(tmp_path) if modality == "DX" else None
    radiograph, truth = make_chest_xray(
        192,
        160,
        nodules=2,
        cardiomegaly=True,
        seed=PHANTOM_SEED,
        photometric="MONOCHROME1",
        modality=modality,  # type: ignore[arg-type]
    )
    assert radiograph.Modality == modality
    assert len(truth.nodules) == 2 and truth.cardiomegaly
    source = tmp_path / "dx.dcm"
    radiograph.save_as(source, enforce_file_format=True)

    rule = {
        "name": "chest-dx",
        "match": {
            "SOPClassUID": [
                "DigitalXRayImageStorageForPresentation",
                "ComputedRadiographyImageStorage",
            ]
        },
        "plugin": "cxr_findings",
    }
    frames_rule = {
        "name": "frames",
        "match": {
            "SOPClassUID": [
                "OphthalmicPhotography8BitImageStorage",
                "DigitalMammographyXRayImageStorageForProcessing",
            ]
        },
        "plugin": "frame_findings",
    }
    with orthanc_and_node(
        tmp_path,
        [rule, frames_rule],
        plugins=[ChestFindings, FrameFindings],
        templates_dir=templates,
        results=["sr", "gsps", "sc"],
        quiet_seconds=1.0,
    ) as (pacs, _):
        upload_many(pacs.client, [source, *(extras or ())])
        study_uid = str(radiograph.StudyInstanceUID)
        send_to_modality(pacs.client, "ainode", [lookup_study(pacs.client, study_uid)])
        if extras is not None:
            for path in extras:
                uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
                send_to_modality(pacs.client, "ainode", [lookup_study(pacs.client, uid)])
        found = wait_for_series(pacs.client, study_uid, ["SR", "PR", "OT"], timeout=240)
        objects = {
            modality: instance_dataset(pacs.client, series[0]["Instances"][0])
            for modality, series in found.items()
        }
        if extras is not None:
            _check_frame_results(pacs, tmp_path / "frames", *extras)

    for modality, dataset in objects.items():
        path = tmp_path / f"{modality}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], modality

    report = hd.sr.srread(tmp_path / "SR.dcm")
    groups = report.content.get_planar_roi_measurement_groups()
    boxes = sorted(group.roi.value.tolist() for group in groups)
    expected = sorted(
        [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        for x0, y0, x1, y1 in (nodule.box for nodule in truth.nodules)
    )
    np.testing.assert_allclose(boxes, expected, atol=1e-3)
    for group in groups:
        (reference,) = group.roi.ContentSequence
        uid = reference.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        assert uid == radiograph.SOPInstanceUID
    (classification,) = report.content.get_image_measurement_groups()
    (evaluation,) = classification.get_qualitative_evaluations()
    assert evaluation.value.value == "52101004"  # present: 0.9 >= threshold 0.5
    gsps = objects["PR"]
    assert gsps.GraphicAnnotationSequence[0].ReferencedImageSequence[
        0
    ].ReferencedSOPInstanceUID == (radiograph.SOPInstanceUID)
    capture = objects["OT"]
    assert capture.BurnedInAnnotation == "YES"
    assert (capture.Rows, capture.Columns) == (radiograph.Rows, radiograph.Columns)
