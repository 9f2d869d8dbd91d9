"""Result profiles per destination: configuration, file tags, worker and exporter end to end.

The end-to-end test runs the real worker (a test plugin on the synthetic chest CT) and
the real exporter, which sends over C-STORE to two pynetdicom storage SCPs: one
destination wants SEG + SR, the other (a PACS that shows neither) SC + GSPS + KO.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pynetdicom import evt

from node.config import DestinationSettings, settings_from_mapping
from node.contract.kinds import file_name, file_tag, profile_tags, required_tags
from node.contract.plugin import InferencePlugin, Prediction, RunContext
from node.contract.volume import Volume
from node.errors import ConfigError
from node.export.exporter import Exporter, result_files
from node.orchestration.prepare import result_tags
from tests.support.jobs import enqueue_series
from tests.support.scp import StoringSCP
from tests.support.spool import spool_series
from tests.support.worker import cpu_worker
from tests.test_results import lung_prediction
from tools.synthetic.chest_ct import make_chest_ct

SOP_CLASSES = {
    "seg": "1.2.840.10008.5.1.4.1.1.66.4",
    "sr": "1.2.840.10008.5.1.4.1.1.88.34",
    "gsps": "1.2.840.10008.5.1.4.1.1.11.1",
    "sc": "1.2.840.10008.5.1.4.1.1.7",
    "ko": "1.2.840.10008.5.1.4.1.1.88.59",
}


def destination(port: int = 104, **extra: object) -> dict[str, object]:
    return {"ae_title": "PACS", "host": "127.0.0.1", "port": port, **extra}


def test_default_profile_is_seg_and_sr() -> None:
    settings = settings_from_mapping({"destinations": {"pacs": destination()}}, environ={})
    pacs = settings.destinations["pacs"]
    assert pacs.results == ["seg", "sr"]
    assert pacs.result_tags == {"seg", "sr"}


def test_dicomweb_destinations_have_profiles_too() -> None:
    raw = {
        "destinations": {
            "web": {"kind": "dicomweb", "url": "http://127.0.0.1:1/dicom-web", "results": ["sc"]},
            "plain": {"kind": "dicomweb", "url": "http://127.0.0.1:1/dicom-web"},
        }
    }
    settings = settings_from_mapping(raw, environ={})
    assert settings.destinations["web"].result_tags == {"sc"}
    assert settings.destinations["plain"].result_tags == {"seg", "sr"}
    assert result_tags(["web", "plain"], settings.destinations) == {"sc", "seg", "sr"}


@pytest.mark.parametrize(
    ("results", "message"),
    [
        (["seg", "mesh"], "unknown result kind 'mesh'"),
        (["sr", "sr"], "listed twice"),
        ([], "at least one kind"),
        (["ko"], "add at least one more kind"),
    ],
)
def test_bad_profiles_are_rejected_with_their_path(results: list[str], message: str) -> None:
    raw = {"destinations": {"pacs": destination(results=results)}}
    with pytest.raises(ConfigError) as raised:
        settings_from_mapping(raw, source="node.yaml", environ={})
    text = str(raised.value)
    assert "node.yaml: destinations.pacs.results: " in text and message in text


@pytest.mark.parametrize(
    ("profile", "tags"),
    [
        (["seg", "sr"], {"seg", "sr"}),
        (["sc", "gsps"], {"sc", "gsps"}),
        (["sr"], {"sr"}),  # references the BINARY SEG, built but not sent
        (["fractional_seg", "sr"], {"fractional_seg", "sr.fractional_seg"}),
        (["labelmap_seg", "sr"], {"labelmap_seg", "sr"}),  # SR never references LABELMAP
        (["sc", "gsps", "ko"], {"sc", "gsps", "ko.gsps+sc"}),
        (["seg", "sr", "ko"], {"seg", "sr", "ko.seg+sr"}),
    ],
)
def test_profile_tags(profile: list[str], tags: set[str]) -> None:
    assert profile_tags(profile) == tags


def test_required_tags_add_what_objects_reference() -> None:
    assert required_tags({"sr"}) == {"sr", "seg"}
    assert required_tags({"ko.gsps+sr.fractional_seg"}) == {
        "ko.gsps+sr.fractional_seg",
        "gsps",
        "sr.fractional_seg",
        "fractional_seg",
    }


def test_file_names_carry_the_tag() -> None:
    assert file_tag(file_name("labelmap_seg", "1.2.3")) == "labelmap_seg"
    assert file_tag(file_name("ko.gsps+sc", "2.25.1")) == "ko.gsps+sc"
    assert file_tag("SEG_1.2.3.dcm") == "seg"  # written before profiles existed
    assert file_tag("SR_1.2.3.dcm") == "sr"
    assert file_tag("notes.txt") is None and file_tag("CT_1.2.dcm") is None


def test_worker_builds_the_union_or_seg_and_sr() -> None:
    destinations = {
        "viewer": DestinationSettings(ae_title="A", host="h", port=1),
        "legacy": DestinationSettings(ae_title="B", host="h", port=2, results=["sc", "gsps"]),
    }
    assert result_tags(["viewer", "legacy"], destinations) == {"seg", "sr", "sc", "gsps"}
    assert result_tags(["legacy"], destinations) == {"sc", "gsps"}
    assert result_tags([], destinations) == {"seg", "sr"}


class PhantomLungs(InferencePlugin):
    """Test plugin: labels the phantom's lung ellipsoids (no model)."""

    name = "phantom_lungs"
    version = "0.0.1"
    template = "ct_lungs"
    modalities = ("CT",)
    truth = make_chest_ct(
        n_slices=30, rows=96, columns=96, pixel_spacing_mm=4.0, slice_thickness_mm=8.0
    )[1]

    def check(self, volume: Volume) -> None:
        pass

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        return lung_prediction(volume, self.truth)


class StorageSCP(StoringSCP):
    """A pynetdicom storage SCP that keeps what it receives."""

    def __init__(self, ae_title: str) -> None:
        super().__init__(ae_title, SOP_CLASSES.values())
        self.received: list[pydicom.Dataset] = []

    def _store(self, event: evt.Event) -> int:
        with self._lock:
            self.received.append(event.dataset)
        return 0x0000

    @property
    def sop_classes(self) -> set[str]:
        return {str(ds.SOPClassUID) for ds in self.received}


@pytest.mark.slow
def test_each_destination_receives_only_its_kinds(database, clock, tmp_path: Path) -> None:
    datasets, _ = make_chest_ct(
        n_slices=30, rows=96, columns=96, pixel_spacing_mm=4.0, slice_thickness_mm=8.0
    )
    with StorageSCP("VIEWER") as viewer, StorageSCP("LEGACY") as legacy:
        destinations = {
            "viewer": DestinationSettings(ae_title="VIEWER", host="127.0.0.1", port=viewer.port),
            "legacy": DestinationSettings(
                ae_title="LEGACY",
                host="127.0.0.1",
                port=legacy.port,
                results=["sc", "gsps", "ko"],
            ),
        }
        series, queue, worker = cpu_worker(
            database,
            [PhantomLungs],
            results_dir=tmp_path / "results",
            clock=clock,
            destinations=lambda: destinations,
        )
        spool_series(series, datasets, tmp_path / "spool", clock())
        exporter = Exporter(queue, lambda: destinations, calling_ae="AINODE", clock=clock)
        job_id = enqueue_series(
            queue,
            datasets,
            rule="chest",
            plugin="phantom_lungs",
            destinations=["viewer", "legacy"],
            now=clock(),
        )
        assert worker.run_once()
        job = queue.get(job_id)
        assert job is not None and job.state == "exporting", job
        assert job.result_dir is not None
        tags = {file_tag(p.name) for p in result_files(job.result_dir)}
        assert tags == {"seg", "sr", "sc", "gsps", "ko.gsps+sc"}
        assert exporter.run_once()
        done = queue.get(job_id)
        assert done is not None and done.state == "done", done
    assert viewer.sop_classes == {SOP_CLASSES["seg"], SOP_CLASSES["sr"]}
    assert legacy.sop_classes == {SOP_CLASSES["sc"], SOP_CLASSES["gsps"], SOP_CLASSES["ko"]}
    n_sc = sum(1 for ds in legacy.received if ds.SOPClassUID == SOP_CLASSES["sc"])
    assert n_sc == len([p for p in result_files(job.result_dir, frozenset({"sc"}))]) > 1
    # The KO lists exactly what the legacy destination received besides itself.
    (ko,) = [ds for ds in legacy.received if ds.SOPClassUID == SOP_CLASSES["ko"]]
    listed = {
        str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for item in ko.ContentSequence
        if item.ValueType in ("IMAGE", "COMPOSITE")
    }
    assert listed == {str(ds.SOPInstanceUID) for ds in legacy.received if ds is not ko}
    sr = next(ds for ds in viewer.received if ds.SOPClassUID == SOP_CLASSES["sr"])
    seg = next(ds for ds in viewer.received if ds.SOPClassUID == SOP_CLASSES["seg"])
    referenced = {
        str(s.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series_item in study.ReferencedSeriesSequence
        for s in series_item.ReferencedSOPSequence
    }
    assert str(seg.SOPInstanceUID) in referenced
    assert (int(seg.Rows), int(seg.Columns), int(seg.NumberOfFrames)) == (96, 96, 60)
