"""The node end to end with real parts: Orthanc, dcmtk, pynetdicom, dciodvfy.

A synthetic chest CT goes into the node (pushed by Orthanc, or by storescu),
the node completes the series, runs ``ct_lungs`` and sends a SEG and an SR
back into the same study in Orthanc.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pynetdicom import AE, build_context

from node.config import BUILT_IN_CHEST_RULE
from tests.support.dcmtk import storescu
from tests.support.net import wait_until
from tests.support.pacs import one_result_each, orthanc_and_node_process
from tests.support.scu import associate
from tests.support.validators import dciodvfy_errors
from tools.node_process import NodeProcess
from tools.orthanc import OrthancServer
from tools.orthanc_rest import (
    find_series,
    instance_dataset,
    lookup_study,
    send_to_modality,
    upload_many,
)
from tools.synthetic.chest_ct import ChestPhantomTruth, make_chest_ct, write_series

pytestmark = pytest.mark.slow

RULE = {**BUILT_IN_CHEST_RULE, "send_to": ["pacs"]}


@pytest.fixture
def pacs_and_node(tmp_path: Path) -> Iterator[tuple[OrthancServer, NodeProcess]]:
    with orthanc_and_node_process(tmp_path, [RULE]) as (pacs, node):
        yield pacs, node


def results_in_pacs(pacs: OrthancServer, study_uid: str) -> dict[str, pydicom.Dataset]:
    return one_result_each(pacs, study_uid, ["SEG", "SR"])


def sr_volumes(sr: pydicom.Dataset, directory: Path) -> dict[str, float]:
    """Volume (cm3) per segment label from the SR's volumetric groups."""
    path = directory / "sr-read.dcm"
    sr.save_as(path)
    report = hd.sr.srread(path)
    volumes = {}
    for group in report.content.get_volumetric_roi_measurement_groups():
        (measurement,) = group.get_measurements(name=codes.SCT.Volume)
        volumes[str(group.tracking_identifier)] = float(measurement.value)
    return volumes


def assert_results_match(
    objects: dict[str, pydicom.Dataset],
    source_series_uid: str,
    truth: ChestPhantomTruth,
    tmp_path: Path,
) -> None:
    seg, sr = objects["SEG"], objects["SR"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source_series_uid
    assert seg.SeriesInstanceUID != source_series_uid != sr.SeriesInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert source_series_uid in {item.SeriesInstanceUID for item in evidence}
    volumes = sr_volumes(sr, tmp_path)
    right = next(v for k, v in volumes.items() if "right" in k.lower())
    left = next(v for k, v in volumes.items() if "left" in k.lower())
    assert right == pytest.approx(truth.right_lung_cm3, rel=0.03)
    assert left == pytest.approx(truth.left_lung_cm3, rel=0.03)
    for kind, dataset in objects.items():
        path = tmp_path / f"{kind}.dcm"
        dataset.save_as(path)
        assert dciodvfy_errors(path) == [], kind


def job_events(node: NodeProcess) -> list[tuple[int, str, float]]:
    with sqlite3.connect(node.data_dir / "state.sqlite3") as db:
        return list(db.execute("SELECT job_id, event, at FROM job_events ORDER BY id"))


def test_orthanc_pushes_a_100_slice_ct_and_gets_seg_and_sr_back(pacs_and_node, tmp_path):
    pacs, node = pacs_and_node
    datasets, truth = make_chest_ct(n_slices=100, seed=11)
    files = write_series(datasets, tmp_path / "series")
    upload_many(pacs.client, files)
    study_uid = datasets[0].StudyInstanceUID
    study_id = lookup_study(pacs.client, study_uid)
    result = send_to_modality(pacs.client, "ainode", [study_id])
    assert result.get("InstancesCount", len(files)) == len(files)
    objects = results_in_pacs(pacs, study_uid)
    assert_results_match(objects, datasets[0].SeriesInstanceUID, truth, tmp_path)
    events = [event for _, event, _ in job_events(node)]
    assert events[:2] == ["queued", "started"] and "sent" in events and events[-1] == "done"


def test_storescu_straight_to_the_node(pacs_and_node, tmp_path):
    pacs, node = pacs_and_node
    datasets, truth = make_chest_ct(n_slices=40, seed=12, series_description="Thorax routine")
    files = write_series(datasets, tmp_path / "series")
    storescu(node.dicom_port, files, "SCANNER", called_ae=node.ae_title)
    objects = results_in_pacs(pacs, datasets[0].StudyInstanceUID)
    assert_results_match(objects, datasets[0].SeriesInstanceUID, truth, tmp_path)
    # The results are kept on disk as well.
    assert len(list(node.results_dir.rglob("*.dcm"))) == 2


def truncated(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: data.index(b"\x08\x00\x05\x00") + 200])
    return target


def test_corrupt_instance_mid_association_loses_nothing_else(pacs_and_node, tmp_path):
    pacs, node = pacs_and_node
    datasets, _ = make_chest_ct(n_slices=31, seed=13)
    files = write_series(datasets, tmp_path / "series")
    # 30 good slices, plus a truncated copy of a 31st, sent in the middle of the association.
    good, extra = files[:30], files[30]
    corrupt = truncated(extra, tmp_path / "corrupt.dcm")
    ae = AE(ae_title="SCANNER")
    ae.requested_contexts = [build_context(datasets[0].SOPClassUID, ["1.2.840.10008.1.2.1"])]
    assoc = associate(ae, "127.0.0.1", node.dicom_port, ae_title=node.ae_title)
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(p).Status) for p in [*good[:15], corrupt, *good[15:]]]
    assoc.release()
    assert statuses[15] >= 0xA000
    assert statuses[:15] + statuses[16:] == [0] * 30
    corrupt_uid = datasets[30].SOPInstanceUID
    wait_until(lambda: corrupt_uid in node.log_path.read_text(), 10, message="log line")
    log_line = next(ln for ln in node.log_path.read_text().splitlines() if corrupt_uid in ln)
    assert "refused" in log_line and "status=0x" in log_line
    # The 30 valid slices are processed: a SEG with two segments on each of them.
    objects = results_in_pacs(pacs, datasets[0].StudyInstanceUID)
    seg = objects["SEG"]
    assert int(seg.NumberOfFrames) == 30 * 2


def test_late_instance_reopens_the_series_and_supersedes_the_result(pacs_and_node, tmp_path):
    pacs, node = pacs_and_node
    datasets, _ = make_chest_ct(n_slices=41, seed=14)
    files = write_series(datasets, tmp_path / "series")
    ordered = sorted(
        files, key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber)
    )

    def send(paths: list[Path]) -> None:
        storescu(node.dicom_port, paths, None, called_ae=node.ae_title)

    study_uid = datasets[0].StudyInstanceUID
    send(ordered[:40])
    first = results_in_pacs(pacs, study_uid)
    send(ordered[40:])  # a late slice at the end of the stack
    second = wait_until(
        lambda: (len(find_series(pacs.client, study_uid, "SR")) == 2) or None, 300, message="2nd SR"
    )
    assert second
    reports = [
        instance_dataset(pacs.client, s["Instances"][0])
        for s in find_series(pacs.client, study_uid, "SR")
    ]
    newer = next(r for r in reports if r.SOPInstanceUID != first["SR"].SOPInstanceUID)
    predecessor = newer.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert (
        predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first["SR"].SOPInstanceUID
    )
    assert "supersedes" in newer.SeriesDescription
    segs = find_series(pacs.client, study_uid, "SEG")
    assert len(segs) == 2
    assert any("supersedes" in s["MainDicomTags"].get("SeriesDescription", "") for s in segs)
