"""The Orthanc test harness against a real Orthanc and real dcmtk tools."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.support.net import free_port, wait_until
from tests.support.orthanc import OrthancServer
from tools.orthanc_rest import (
    echo_modality,
    find_series,
    instance_dataset,
    lookup_series,
    lookup_study,
    send_to_modality,
    upload,
    upload_many,
)

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not Path("/usr/sbin/Orthanc").exists() or shutil.which("storescu") is None,
    reason="needs Debian's Orthanc and dcmtk",
)


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def tiny_ct(study_uid: str, series_uid: str, index: int, description: str = "Chest") -> Dataset:
    """A valid 16x16 CT slice; enough for storage and queries."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.PatientName = "Phantom^Harness"
    ds.PatientID = "HARNESS"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.SeriesDescription = description
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(index) * 3.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.SliceThickness = 3.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.PixelData = np.full((16, 16), index, dtype=np.int16).tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def pacs() -> Iterator[OrthancServer]:
    with OrthancServer(aet="TESTPACS", modalities={"ainode": ["AINODE", "127.0.0.1", 11112]}) as s:
        yield s


def test_echo_with_dcmtk(pacs: OrthancServer) -> None:
    result = subprocess.run(
        ["echoscu", "-aec", pacs.aet, "127.0.0.1", str(pacs.dicom_port)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_system_and_modalities(pacs: OrthancServer) -> None:
    system = pacs.client.get_system()
    assert system["DicomAet"] == "TESTPACS"
    assert system["DicomPort"] == pacs.dicom_port
    assert "ainode" in pacs.client.get_modalities()
    assert "dicom-web" in pacs.client.get_plugins()


def test_rest_upload_and_browse(pacs: OrthancServer) -> None:
    study_uid, series_uid = generate_uid(), generate_uid()
    datasets = [tiny_ct(study_uid, series_uid, i) for i in range(3)]
    ids = upload_many(pacs.client, datasets)
    assert len(set(ids)) == 3

    study_id = lookup_study(pacs.client, study_uid)
    assert study_id is not None and study_id in pacs.client.get_studies()
    (series,) = pacs.client.get_studies_id_series(study_id)
    assert series["MainDicomTags"]["SeriesInstanceUID"] == series_uid
    assert pacs.client.get_series_id(series["ID"])["ParentStudy"] == study_id
    assert sorted(i["ID"] for i in pacs.client.get_series_id_instances(series["ID"])) == sorted(ids)

    parsed = instance_dataset(pacs.client, ids[0])
    assert parsed.SOPInstanceUID == datasets[0].SOPInstanceUID
    assert pacs.client.get_instances_id_file(ids[0])[128:132] == b"DICM"

    assert [s["ID"] for s in find_series(pacs.client, study_uid, "CT")] == [series["ID"]]
    assert find_series(pacs.client, study_uid, "SEG") == []
    assert lookup_series(pacs.client, series_uid) == series["ID"]


def test_reupload_replaces_instance(pacs: OrthancServer) -> None:
    """OverwriteInstances: a result re-sent with the same SOP Instance UID replaces the old."""
    study_uid, series_uid = generate_uid(), generate_uid()
    first = tiny_ct(study_uid, series_uid, 0, description="first")
    second = tiny_ct(study_uid, series_uid, 0, description="second")
    second.SOPInstanceUID = first.SOPInstanceUID
    second.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    first_id = upload(pacs.client, first)
    assert upload(pacs.client, second) == first_id
    (series,) = find_series(pacs.client, study_uid)
    assert len(series["Instances"]) == 1
    assert instance_dataset(pacs.client, first_id).SeriesDescription == "second"


def test_storescu_then_dicomweb_qido(pacs: OrthancServer, tmp_path: Path) -> None:
    study_uid, series_uid = generate_uid(), generate_uid()
    files = [write(tiny_ct(study_uid, series_uid, i), tmp_path / f"{i}.dcm") for i in range(4)]
    result = subprocess.run(
        ["storescu", "-aec", pacs.aet, "127.0.0.1", str(pacs.dicom_port), *map(str, files)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr

    (series,) = wait_until(
        lambda: find_series(pacs.client, study_uid, "CT"), timeout=30, message="stored series"
    )
    assert len(series["Instances"]) == 4

    qido = httpx.get(
        f"{pacs.url}/dicom-web/studies", params={"StudyInstanceUID": study_uid}, timeout=30
    )
    assert qido.status_code == 200
    (study_json,) = qido.json()
    assert study_json["0020000D"]["Value"] == [study_uid]
    series_json = httpx.get(f"{pacs.url}/dicom-web/studies/{study_uid}/series", timeout=30).json()
    assert [s["00080060"]["Value"] for s in series_json] == [["CT"]]


def test_send_to_added_modality(pacs: OrthancServer, tmp_path: Path) -> None:
    """A modality registered after start-up receives a study by C-STORE (dcmtk storescp)."""
    port = free_port()
    received = tmp_path / "received"
    received.mkdir()
    scp = subprocess.Popen(
        ["storescp", "-aet", "SINK", "--output-directory", str(received), str(port)],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        study_uid, series_uid = generate_uid(), generate_uid()
        upload_many(pacs.client, (tiny_ct(study_uid, series_uid, i) for i in range(2)))
        pacs.client.put_modalities_id(
            "sink", json={"AET": "SINK", "Host": "127.0.0.1", "Port": port}
        )
        wait_until(lambda: echo_modality(pacs.client, "sink"), timeout=30, message="storescp echo")
        study_id = lookup_study(pacs.client, study_uid)
        assert study_id is not None
        answer = send_to_modality(pacs.client, "sink", [study_id])
        assert answer["InstancesCount"] == 2 and answer["FailedInstancesCount"] == 0
        names = wait_until(lambda: sorted(received.iterdir()), timeout=30, message="files")
        assert len(names) == 2
    finally:
        scp.terminate()
        scp.wait(timeout=10)


def test_repository_dev_config_starts(tmp_path: Path) -> None:
    """orthanc/orthanc.json starts as it is (ports moved), with DICOMweb and the node."""
    settings = json.loads((REPO / "orthanc" / "orthanc.json").read_text())
    assert settings["OverwriteInstances"] is True
    assert settings["DicomModalities"]["ainode"] == ["AINODE", "127.0.0.1", 11112]
    settings["HttpPort"], settings["DicomPort"] = free_port(), free_port()
    config = tmp_path / "orthanc" / "orthanc.json"
    config.parent.mkdir()
    config.write_text(json.dumps(settings))
    with OrthancServer.from_config_file(config, log_dir=tmp_path / "log") as dev:
        assert dev.client.get_system()["DicomAet"] == "ORTHANC"
        assert "dicom-web" in dev.client.get_plugins()
        assert dev.client.get_modalities() == ["ainode"]
        assert dev.client.get(f"{dev.url}/dicom-web/studies").json() == []
    # Relative storage paths resolve next to the configuration file.
    assert (tmp_path / "var" / "orthanc").is_dir()


def test_failed_start_reports_log(tmp_path: Path) -> None:
    bad = OrthancServer(config_overrides={"StableAge": "soon"}, workdir=tmp_path)
    try:
        with pytest.raises(RuntimeError, match=r"(?s)log tail.*StableAge"):
            bad.start()
    finally:
        bad.stop()


def test_pydicom_reads_what_orthanc_stores(pacs: OrthancServer) -> None:
    ds = tiny_ct(generate_uid(), generate_uid(), 7)
    instance_id = upload(pacs.client, ds)
    stored = instance_dataset(pacs.client, instance_id)
    assert isinstance(stored, pydicom.Dataset)
    assert int(stored.pixel_array[0, 0]) == 7
