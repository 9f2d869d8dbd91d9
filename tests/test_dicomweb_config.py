"""DICOMweb configuration and STOW-RS building blocks (no network)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pydicom
import pytest
import yaml

from node.config import (
    DestinationSettings,
    DicomWebDestinationSettings,
    DicomWebSourceSettings,
    DimseSourceSettings,
    settings_from_mapping,
)
from node.dicom import status
from node.dicomweb.receive import (
    BadRequest,
    InstanceRejected,
    StowResult,
    UnsupportedMediaType,
    decode_part10,
    parse_content_type,
)
from node.errors import ConfigError
from node.state.pulls import PullStore
from node.state.series import InstanceRecord, SeriesStore

# Every store test here runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.state_backends

REPO = Path(__file__).resolve().parents[1]


def settings(**sections):
    return settings_from_mapping(sections, environ={})


def test_destinations_of_both_kinds():
    loaded = settings(
        destinations={
            "pacs": {"ae_title": "PACS", "host": "h", "port": 104},
            "web": {
                "kind": "dicomweb",
                "url": "https://pacs/dicom-web",
                "auth": {"type": "bearer", "token": "t"},
                "tls": {"verify": False},
            },
        }
    )
    assert isinstance(loaded.destinations["pacs"], DestinationSettings)
    web = loaded.destinations["web"]
    assert isinstance(web, DicomWebDestinationSettings)
    assert web.auth.type == "bearer" and web.tls.verify is False and web.max_attempts is None
    assert web.give_up_after_seconds == 86400


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"kind": "dicomweb", "url": "ftp://x"}, "destinations.web.url"),
        ({"kind": "dicomweb", "url": "http://x", "auth": {"type": "basic"}}, "needs a username"),
        ({"kind": "dicomweb", "url": "http://x", "ae_title": "X"}, "destinations.web.ae_title"),
    ],
)
def test_bad_dicomweb_destination_names_the_key(entry, message):
    with pytest.raises(ConfigError, match=message):
        settings(destinations={"web": entry})


def test_sources_and_tokens():
    digest = hashlib.sha256(b"a-long-enough-token").hexdigest()
    loaded = settings(
        sources={
            "web": {"kind": "dicomweb", "url": "http://o/dicom-web", "ae_title": "ORTHANC"},
            "dimse": {"kind": "dimse", "ae_title": "O", "host": "h", "port": 4242,
                      "retrieve": "move"},
        },
        dicomweb={"tokens": [{"name": "a", "sha256": digest},
                             {"name": "b", "token": "another-long-token"}]},
    )  # fmt: skip
    assert isinstance(loaded.sources["web"], DicomWebSourceSettings)
    assert isinstance(loaded.sources["dimse"], DimseSourceSettings)
    assert loaded.sources["dimse"].retrieve == "move"
    with pytest.raises(ConfigError, match="exactly one of token and sha256"):
        settings(dicomweb={"tokens": [{"name": "a"}]})
    with pytest.raises(ConfigError, match="at least 16"):
        settings(dicomweb={"tokens": [{"name": "a", "token": "short"}]})
    with pytest.raises(ConfigError, match=r"sources\.x"):
        settings(sources={"x": {"url": "http://o"}})


def test_shipped_example_configs_are_valid():
    for path in (REPO / "orthanc" / "ainode-notify.yaml", REPO / "docker" / "ainode.yaml"):
        settings_from_mapping(yaml.safe_load(path.read_text()), source=str(path), environ={})
    notify = json.loads((REPO / "orthanc" / "orthanc-notify.json").read_text())
    node = yaml.safe_load((REPO / "orthanc" / "ainode-notify.yaml").read_text())
    assert notify["AiNode"]["Token"] in {t["token"] for t in node["dicomweb"]["tokens"]}
    assert notify["AiNode"]["Source"] in node["sources"]
    assert notify["PythonScript"] == "orthanc/ainode_plugin.py"


def test_content_type_checks():
    assert parse_content_type('multipart/related; type="application/dicom"; boundary=xyz') == b"xyz"
    assert parse_content_type("Multipart/Related; boundary=xyz") == b"xyz"  # type defaults
    for bad in ("application/dicom", "multipart/form-data; boundary=x", "",
                'multipart/related; type="application/dicom+json"; boundary=x'):  # fmt: skip
        with pytest.raises(UnsupportedMediaType):
            parse_content_type(bad)
    with pytest.raises(BadRequest):
        parse_content_type('multipart/related; type="application/dicom"')


def test_stow_status_follows_ps3_18():
    ok = ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")
    bad = ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.5", status.CANNOT_UNDERSTAND)
    assert StowResult(stored=[ok]).http_status() == 200
    assert StowResult(stored=[ok], failed=[bad]).http_status() == 202
    assert StowResult(failed=[bad]).http_status() == 409
    assert StowResult(failed=[(*bad[:2], status.OUT_OF_RESOURCES)]).http_status() == 503
    assert StowResult(syntax_error="x").http_status() == 400
    assert StowResult(stored=[ok], syntax_error="x").http_status() == 202
    body = StowResult(stored=[ok], failed=[bad]).response()
    assert body["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert body["00081199"]["Value"][0]["00081155"]["Value"] == ["1.2.3.4"]


def test_decode_part10_refuses_non_dicom_and_adds_a_preamble(tmp_path):
    with pytest.raises(InstanceRejected) as refused:
        decode_part10(b"hello")
    assert refused.value.code == status.CANNOT_UNDERSTAND
    dataset = pydicom.Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    dataset.SOPInstanceUID = "1.2.3.4.5"
    dataset.file_meta = pydicom.dataset.FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    path = tmp_path / "x.dcm"
    dataset.save_as(path, enforce_file_format=True)
    data = path.read_bytes()[128:]  # no preamble
    decoded, spooled = decode_part10(data)
    assert decoded.SOPInstanceUID == "1.2.3.4.5" and spooled[128:132] == b"DICM"


def test_expectation_completes_once_per_generation(database, tmp_path):
    series, pulls = SeriesStore(database), PullStore(database)

    def receive(sop: str, now: float) -> None:
        record = InstanceRecord(sop_uid=sop, series_uid="1.2.9", study_uid="1.2.8",
                                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                                transfer_syntax="1.2.840.10008.1.2.1",
                                path=tmp_path / sop, size=1)  # fmt: skip
        series.record_instance(record, now)

    pulls.expect(series_uid="1.2.9", study_uid="1.2.8", expected_count=2, source="s",
                 rule="only-this", now=0.0)  # fmt: skip
    receive("1.1", 1.0)
    assert pulls.counted_series() == []
    receive("1.2", 2.0)
    assert pulls.counted_series() == ["1.2.9"]
    row = series.force_complete("1.2.9", 3.0)
    assert row is not None and row.generation == 1
    assert pulls.rule_for_completion("1.2.9", row.generation) == "only-this"
    receive("1.3", 4.0)  # a late instance re-opens: the count no longer applies
    assert pulls.counted_series() == []
    assert pulls.unqueried_receiving({""}) == [("1.2.9", "1.2.8", 1, "")]
