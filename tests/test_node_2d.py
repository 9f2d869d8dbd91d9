"""2D images through the node: DX, a two-view MG series, an MG For Processing image, an
OP RGB photograph and a multi-frame OP image are sent with dcmtk's storescu, routed on SOP
class, laterality and view, loaded as frames and run by a routine defined here; its
per-image classifications come back as result objects that reference the exact image and
frame."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation,
    OphthalmicPhotography8BitImageStorage,
)

from node.contract.plugin import (
    Accepts,
    Classification,
    InferencePlugin,
    Prediction,
    RunContext,
)
from node.contract.volume import Volume
from node.orchestration.registry import PluginRegistry
from tests.support.node import listening_node, send_to_node, stepped_settings
from tests.support.validators import dciodvfy_errors
from tools.synthetic.chest_xray import make_chest_xray
from tools.synthetic.projection import SeriesIdentity, mg_image, op_image

pytestmark = pytest.mark.slow

TEMPLATE = """\
format_version: 3
name: image_probe
description: Per-image abnormality score (test routine, not a clinical model).
algorithm:
  name: ainode-test-2d-probe
  version: "0.1.0"
  family: {value: "123110", scheme: DCM, meaning: Artificial Intelligence}
  manufacturer: ainode
  device_uid: "2.25.118027417893018231770352406542139216201"
output:
  series_description: AI 2D probe
  content_label: PROBE
classifications:
  - key: image_abnormal
    concept: {value: "404684003", scheme: SCT, meaning: Finding}
    label: Abnormal image
    present: {value: "52101004", scheme: SCT, meaning: Present}
    absent: {value: "272519000", scheme: SCT, meaning: Absent}
    threshold: 0.5
    per_image: true
"""


class ImageProbe(InferencePlugin):
    """Records what it was given; scores each frame by its mean brightness."""

    name = "image_probe"
    version = "0.1.0"
    template = "image_probe"
    accepts = Accepts(
        modalities=("DX", "MG", "OP"),
        sop_classes=(
            "DigitalXRayImageStorageForPresentation",
            "DigitalMammographyXRayImageStorageForPresentation",
            "DigitalMammographyXRayImageStorageForProcessing",
            "OphthalmicPhotography8BitImageStorage",
        ),
        lateralities=("L", "R", "U"),
        samples_per_pixel=(1, 3),
    )
    seen: ClassVar[list[dict[str, Any]]] = []

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        ImageProbe.seen.append(
            {
                "rule": context.rule,
                "series": volume.series_instance_uid,
                "array": volume.array.shape,
                "is_2d": volume.is_2d,
                "sop_classes": volume.sop_class_uids,
                "lateralities": volume.lateralities,
                "views": volume.views,
                "frames": volume.frames,
                "spacing": volume.spacing[1:],
            }
        )
        scale = 255.0 if volume.samples_per_pixel == 3 else float(volume.array.max() or 1.0)
        return Prediction(
            classifications=[
                Classification("image_abnormal", float(volume.array[k].mean() / scale), frame=k)
                for k in range(volume.shape[0])
            ]
        )


@pytest.fixture
def node(tmp_path, clock):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "image_probe.yaml").write_text(TEMPLATE)
    settings = stepped_settings(
        tmp_path,
        {
            "templates_dir": str(templates),
            "rules": [
                {
                    "name": "chest_dx",
                    "match": {"SOPClassUID": "DigitalXRayImageStorageForPresentation"},
                    "plugin": "image_probe",
                },
                {
                    "name": "left_mammo",
                    "match": {
                        "SOPClassUID": "DigitalMammographyXRayImageStorageForPresentation",
                        "ImageLaterality": "L",
                        "ViewPosition": {"in": ["CC", "MLO"]},
                    },
                    "plugin": "image_probe",
                },
                {
                    "name": "right_mammo",
                    "match": {"Modality": "MG", "ImageLaterality": "R"},
                    "plugin": "image_probe",
                },
                {
                    "name": "fundus",
                    "match": {"SOPClassUID": "OphthalmicPhotography8BitImageStorage"},
                    "plugin": "image_probe",
                },
                {
                    "name": "processing_only",
                    "match": {"SOPClassUID": "DigitalMammographyXRayImageStorageForProcessing"},
                    "plugin": "image_probe",
                },
            ],
        },
    )
    registry = PluginRegistry()
    registry.register(ImageProbe)
    ImageProbe.seen.clear()
    with listening_node(settings, clock, registry) as node:
        yield node


def _studies(directory: Path) -> dict[str, list[pydicom.Dataset]]:
    chest, _ = make_chest_xray(128, 128, nodules=1, seed=11)
    mammo = SeriesIdentity(patient_name="SYNTHETIC^MAMMO", patient_id="SYN2DMG")
    rng = np.random.default_rng(5)
    breast = rng.integers(200, 3000, size=(96, 64)).astype(np.uint16)
    views = [
        mg_image(
            breast,
            laterality="L",
            view=view,
            imager_pixel_spacing_mm=0.1,
            identity=mammo,
            instance_number=number,
        )
        for number, view in ((2, "MLO"), (1, "CC"))
    ]
    # The same left breast as the detector's raw For Processing image, a series of its own:
    # only the For Processing rule may take it (left_mammo wants For Presentation).
    raw = mg_image(
        breast,
        laterality="L",
        view="CC",
        imager_pixel_spacing_mm=0.1,
        identity=SeriesIdentity(
            patient_name="SYNTHETIC^MAMMO",
            patient_id="SYN2DMG",
            study_instance_uid=mammo.study_instance_uid,
        ),
        intent="FOR PROCESSING",
    )
    eye = rng.integers(0, 256, size=(48, 64, 3)).astype(np.uint8)
    fundus = op_image(eye, laterality="R", pixel_spacing_mm=0.01)
    frames = op_image(np.stack([eye, eye[::-1], eye[:, ::-1]]), laterality="L")
    studies = {
        "dx": [chest],
        "mg": views,
        "mg_raw": [raw],
        "op": [fundus],
        "op_frames": [frames],
    }
    for name, datasets in studies.items():
        (directory / name).mkdir(parents=True)
        for ds in datasets:
            ds.save_as(directory / name / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return studies


def test_dx_mg_and_op_series_reach_the_routine_and_complete(node, clock, tmp_path):
    studies = _studies(tmp_path / "in")
    send_to_node(node, sorted((tmp_path / "in").rglob("*.dcm")))
    clock.advance(11)
    completed = node.completion.poll()
    assert sorted(row.instance_count for row in completed) == [1, 1, 1, 1, 2]

    jobs = node.queue.jobs()
    # Routed on SOP class, laterality and view: no right-breast job (no right breast was
    # sent), the For Presentation views go to left_mammo only and the For Processing image
    # of the same breast and view to processing_only only.
    rules = sorted(job.rule for job in jobs)
    assert rules == ["chest_dx", "fundus", "fundus", "left_mammo", "processing_only"]
    by_rule = {job.rule: job.series_uid for job in jobs}
    assert by_rule["left_mammo"] == studies["mg"][0].SeriesInstanceUID
    assert by_rule["processing_only"] == studies["mg_raw"][0].SeriesInstanceUID
    while node.worker.run_once():
        pass

    for job in jobs:
        done = node.queue.get(job.id)
        events = [e.event for e in node.queue.events(job.id)]
        assert done.state == "done", (job.rule, done.error, events)
        assert "volume_loaded" in events and "inference_done" in events

    seen = {entry["series"]: entry for entry in ImageProbe.seen}
    for name, datasets in studies.items():
        seen[name] = seen[str(datasets[0].SeriesInstanceUID)]
    chest = studies["dx"][0]
    assert seen["dx"]["array"] == (1, 128, 128)
    assert seen["dx"]["is_2d"]
    assert seen["dx"]["sop_classes"] == (DigitalXRayImageStorageForPresentation,)
    assert seen["dx"]["views"] == ("PA",)
    assert seen["dx"]["spacing"] == pytest.approx((1.4, 1.4))
    assert seen["dx"]["frames"][0].sop_instance_uid == chest.SOPInstanceUID

    cc, mlo = sorted(studies["mg"], key=lambda ds: int(ds.InstanceNumber))
    assert seen["mg"]["array"] == (2, 96, 64)
    assert seen["mg"]["lateralities"] == ("L", "L")
    assert seen["mg"]["views"] == ("CC", "MLO")
    assert seen["mg"]["sop_classes"] == (DigitalMammographyXRayImageStorageForPresentation,) * 2
    assert [f.sop_instance_uid for f in seen["mg"]["frames"]] == [
        cc.SOPInstanceUID,
        mlo.SOPInstanceUID,
    ]

    raw = studies["mg_raw"][0]
    assert raw.PresentationIntentType == "FOR PROCESSING"
    assert seen["mg_raw"]["array"] == (1, 96, 64)
    assert seen["mg_raw"]["sop_classes"] == (DigitalMammographyXRayImageStorageForProcessing,)
    assert seen["mg_raw"]["frames"][0].sop_instance_uid == raw.SOPInstanceUID

    assert seen["op"]["array"] == (1, 48, 64, 3)
    assert seen["op"]["lateralities"] == ("R",)
    assert seen["op"]["sop_classes"] == (OphthalmicPhotography8BitImageStorage,)

    multi = studies["op_frames"][0]
    assert seen["op_frames"]["array"] == (3, 48, 64, 3)
    assert [(f.sop_instance_uid, f.frame_number) for f in seen["op_frames"]["frames"]] == [
        (multi.SOPInstanceUID, n) for n in (1, 2, 3)
    ]

    # The results reference the exact images (and frames) they score and pass dciodvfy.
    for job in jobs:
        done = node.queue.get(job.id)
        written = sorted(done.result_dir.glob("*.dcm"))
        assert written, job.rule
        referenced: set[str] = set()
        for path in written:
            assert dciodvfy_errors(path) == [], (job.rule, path.name)
            ds = pydicom.dcmread(path)
            for evidence in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
                for series in evidence.ReferencedSeriesSequence:
                    referenced |= {
                        str(item.ReferencedSOPInstanceUID) for item in series.ReferencedSOPSequence
                    }
        source = {f.sop_instance_uid for f in seen[job.series_uid]["frames"]}
        assert source <= referenced, job.rule
        if job.series_uid == multi.SeriesInstanceUID:
            (report,) = (pydicom.dcmread(p) for p in written if p.name.startswith("sr_"))
            assert _frame_numbers(report) == {1, 2, 3}


def _frame_numbers(dataset: pydicom.Dataset) -> set[int]:
    """Every ReferencedFrameNumber anywhere in a dataset."""
    found: set[int] = set()
    for element in dataset.iterall():
        if element.keyword == "ReferencedFrameNumber":
            values = element.value if element.VM > 1 else [element.value]
            found |= {int(v) for v in values}
    return found
