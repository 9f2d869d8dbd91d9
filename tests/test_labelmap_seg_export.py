"""A LABELMAP SEG (Label Map Segmentation Storage) through a real Orthanc 1.10.

Debian's Orthanc 1.10 is built on DCMTK 3.6.7, which predates the SOP class (DICOM
2024, Sup 243): with its default ``UnknownSopClassAccepted: false`` it accepts no
presentation context for it, so the exporter's association is refused and the job keeps
its files. With ``UnknownSopClassAccepted: true`` the C-STORE succeeds; STOW-RS (the
DICOMweb plugin) stores it with the default configuration. Either way the object comes
back as the label map (highdicom reads it).
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from benchmarks.ct_series import write_ct_series
from benchmarks.encoding import blob_label_map, write_template
from node.config import DestinationSettings, DicomWebDestinationSettings
from node.contract.assemble import assemble_volume
from node.contract.plugin import Prediction
from node.errors import ExportError
from node.export.dimse import send_files
from node.export.stow import stow_files
from node.results import build_results, load_template
from tools.orthanc import OrthancServer
from tools.orthanc_rest import lookup_series

LABELMAP_SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"


@pytest.fixture(scope="module")
def labelmap_seg(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, list[str]]:
    """A 6-segment LABELMAP SEG of a 10 x 32 x 32 CT written as the worker does."""
    directory = tmp_path_factory.mktemp("labelmap")
    _, paths = write_ct_series(directory / "ct", 10, rows=32, columns=32)
    volume = assemble_volume(pydicom.dcmread(path) for path in paths)
    label_map = blob_label_map(volume.shape, 6)
    template = load_template(write_template(directory, 6))
    results = build_results(
        volume, Prediction(label_map=label_map), template, tags=["labelmap_seg"]
    )
    (seg,) = results.objects["labelmap_seg"]
    assert seg.SOPClassUID == LABELMAP_SEG_STORAGE
    path = directory / "labelmap_seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    return path, label_map, [str(uid) for uid in volume.sop_instance_uids]


def _read_back(pacs: OrthancServer, path: Path) -> hd.seg.Segmentation:
    header = pydicom.dcmread(path, stop_before_pixels=True)
    series_id = lookup_series(pacs.client, str(header.SeriesInstanceUID))
    assert series_id is not None, "Orthanc does not hold the SEG"
    (instance,) = pacs.client.get_series_id_instances(series_id)
    data = pacs.client.get_instances_id_file(instance["ID"])
    return hd.seg.Segmentation.from_dataset(pydicom.dcmread(BytesIO(data)))


def _check(seg: hd.seg.Segmentation, label_map: np.ndarray, sources: list[str]) -> None:
    assert seg.SOPClassUID == LABELMAP_SEG_STORAGE and seg.SegmentationType == "LABELMAP"
    pixels = seg.get_pixels_by_source_instance(sources, combine_segments=True)
    np.testing.assert_array_equal(pixels, label_map)


@pytest.mark.slow
def test_cstore_needs_unknown_sop_classes_accepted_by_orthanc_1_10(
    tmp_path: Path, labelmap_seg: tuple[Path, np.ndarray, list[str]]
) -> None:
    path, label_map, sources = labelmap_seg
    with OrthancServer(workdir=tmp_path / "default") as pacs:
        destination = DestinationSettings(ae_title=pacs.aet, host="127.0.0.1", port=pacs.dicom_port)
        with pytest.raises(ExportError, match=r"association with .* failed"):
            send_files(destination, [path], calling_ae="AINODE")
        assert (
            lookup_series(
                pacs.client, str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
            )
            is None
        )
    with OrthancServer(
        workdir=tmp_path / "accepting", config_overrides={"UnknownSopClassAccepted": True}
    ) as pacs:
        destination = DestinationSettings(ae_title=pacs.aet, host="127.0.0.1", port=pacs.dicom_port)
        (acknowledged,) = send_files(destination, [path], calling_ae="AINODE")
        assert acknowledged.status == 0x0000
        _check(_read_back(pacs, path), label_map, sources)


@pytest.mark.slow
def test_stow_rs_stores_it_with_orthancs_default_configuration(
    tmp_path: Path, labelmap_seg: tuple[Path, np.ndarray, list[str]]
) -> None:
    path, label_map, sources = labelmap_seg
    with OrthancServer(workdir=tmp_path / "orthanc") as pacs:
        destination = DicomWebDestinationSettings.model_validate(
            {"kind": "dicomweb", "url": f"{pacs.url}/dicom-web", "timeout_seconds": 30}
        )
        stow_files(destination, [path])
        _check(_read_back(pacs, path), label_map, sources)
