"""A chest radiograph (DX or CR, MONOCHROME1) from a real Orthanc through the node and back.

The routine is defined here: it reports the phantom's cardiomegaly as a classification and
its nodules as boxes. The destination takes SR, GSPS and SC; all three arrive in Orthanc,
pass dciodvfy, and the SR's boxes are the phantom's nodules on the radiograph.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from node.runtime.plugin import (
    Accepts,
    Classification,
    Detection,
    InferencePlugin,
    Prediction,
    RunContext,
)
from node.runtime.volume import Volume
from node.synthetic.chest_xray import ChestXrayTruth, make_chest_xray
from tests.support.validators import dciodvfy_errors

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


@pytest.mark.parametrize("modality", ["DX", "CR"])
def test_chest_radiograph_findings_arrive_in_orthanc(tmp_path: Path, modality: str) -> None:
    from tests.support.pacs import orthanc_and_node

    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "cxr_findings.yaml").write_text(TEMPLATE)
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
    with orthanc_and_node(
        tmp_path,
        [rule],
        plugins=[ChestFindings],
        templates_dir=templates,
        results=["sr", "gsps", "sc"],
        quiet_seconds=1.0,
    ) as (pacs, _):
        pacs.upload_many([source])
        study_uid = str(radiograph.StudyInstanceUID)
        pacs.send_to_modality("ainode", [pacs.lookup_study(study_uid)])
        found = pacs.wait_for_series(study_uid, ["SR", "PR", "OT"], timeout=240)
        objects = {
            modality: pacs.instance_dataset(series[0]["Instances"][0])
            for modality, series in found.items()
        }

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
