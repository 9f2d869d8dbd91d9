"""The performer's parts without a network: which task a workitem asks for and which rule
performs it, where its inputs come from, what the Output Information Sequence says."""

from __future__ import annotations

import time
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.config import DicomWebSourceSettings, settings_from_mapping
from node.orchestration.ingest import Ingestor
from node.pull.service import PullService
from node.pull.worklist import (
    InputRef,
    RemoteWorklistPerformer,
    input_source,
    inputs_of,
    output_information,
    task_keys,
)
from node.spool import Spool
from node.state.db import Database
from node.state.jobs import JobQueue
from node.state.performed import PerformedStore
from node.state.pulls import PullStore
from node.state.series import SeriesStore


def _code(scheme: str, value: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodingSchemeDesignator, code.CodeValue, code.CodeMeaning = scheme, value, meaning
    return code


def test_task_keys_and_inputs_come_from_the_workitem() -> None:
    item = Dataset()
    item.ScheduledWorkitemCodeSequence = DicomSequence([_code("99AINODE", "LUNGS", "Lungs")])
    item.ScheduledStationNameCodeSequence = DicomSequence([_code("99X", "GPU1", "AI box")])
    first, second = Dataset(), Dataset()
    for ref, series in ((first, "1.2.3.1"), (second, "1.2.3.2")):
        ref.StudyInstanceUID, ref.SeriesInstanceUID = "1.2.3", series
    wado = Dataset()
    wado.RetrieveURL = "http://pacs/dicom-web/studies/1.2.3"
    first.WADORSRetrievalSequence = DicomSequence([wado])
    retrieval = Dataset()
    retrieval.RetrieveAETitle = "PACS"
    second.DICOMRetrievalSequence = DicomSequence([retrieval])
    no_series = Dataset()
    no_series.StudyInstanceUID = "1.2.3"
    item.InputInformationSequence = DicomSequence([first, second, no_series])
    assert task_keys(item) == ["99AINODE^LUNGS", "LUNGS", "99X^GPU1", "GPU1", "AI box"]
    assert inputs_of(item) == [
        InputRef("1.2.3", "1.2.3.1", "http://pacs/dicom-web/studies/1.2.3", ""),
        InputRef("1.2.3", "1.2.3.2", "", "PACS"),
    ]


def test_inputs_come_from_the_source_the_retrieve_location_names() -> None:
    settings = settings_from_mapping(
        {
            "sources": {
                "web": {"kind": "dicomweb", "url": "http://pacs/dicom-web/"},
                "dimse": {"kind": "dimse", "ae_title": "PACS", "host": "pacs", "port": 104},
                "ris": {"kind": "dicomweb", "url": "http://ris/ups",
                        "worklist": {"tasks": {"99AINODE^LUNGS": "chest"},
                                     "inputs_source": "web"}},
            }
        },
        environ={},
    )  # fmt: skip
    sources = settings.sources
    web = InputRef("1", "2", "http://pacs/dicom-web/studies/1")
    assert input_source(web, sources, None, "ris") == "web"
    assert input_source(InputRef("1", "2", retrieve_ae="PACS"), sources, None, "ris") == "dimse"
    elsewhere = InputRef("1", "2", "http://elsewhere/studies/1")
    assert input_source(elsewhere, sources, "web", "ris") == "web"  # inputs_source
    assert input_source(elsewhere, sources, None, "ris") is None  # nothing serves it
    assert input_source(InputRef("1", "2", "http://pacs/dicom-webx/1"), sources, None, "r") is None
    assert input_source(InputRef("1", "2"), sources, None, "ris") == "ris"  # no location


def test_output_information_lists_each_result_series_and_where_it_was_sent(
    tmp_path: Path,
) -> None:
    study, series = generate_uid(), generate_uid()
    sops = []
    for index in range(2):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.save_as(tmp_path / f"seg-{index}.dcm", enforce_file_format=True)
        sops.append(ds.SOPInstanceUID)
    settings = settings_from_mapping(
        {
            "destinations": {
                "pacs": {"ae_title": "PACS", "host": "pacs", "port": 104},
                "web": {"kind": "dicomweb", "url": "http://pacs/dicom-web"},
            }
        },
        environ={},
    )
    (item,) = output_information(tmp_path, settings.destinations, ["pacs", "web"])
    assert (item.StudyInstanceUID, item.SeriesInstanceUID) == (study, series)
    assert sorted(r.ReferencedSOPInstanceUID for r in item.ReferencedSOPSequence) == sorted(sops)
    assert item.DICOMRetrievalSequence[0].RetrieveAETitle == "PACS"
    assert item.WADORSRetrievalSequence[0].RetrieveURL == (
        f"http://pacs/dicom-web/studies/{study}/series/{series}"
    )
    # Results that were not sent (shadow mode) say so by naming no location.
    (unsent,) = output_information(tmp_path, settings.destinations, [])
    assert "DICOMRetrievalSequence" not in unsent and "WADORSRetrievalSequence" not in unsent
    assert output_information(None, settings.destinations, ["pacs"]) == []


def test_only_tasks_mapped_to_an_active_rule_are_claimed(
    database: Database, tmp_path: Path
) -> None:
    settings = settings_from_mapping(
        {
            "rules": [{"name": "chest", "match": {"Modality": "CT"}, "plugin": "ct_lungs"}],
            "worklist": {"tasks": {"99AINODE^ORGANS": "chest", "99AINODE^DENOISE": "ct_denoise"}},
            "sources": {
                "own": {"kind": "dicomweb", "url": "http://ris/ups",
                        "worklist": {"tasks": {"99AINODE^LUNGS": "chest", "99X^OLD": "gone"}}},
                "shared": {"kind": "dicomweb", "url": "http://ris2/ups", "worklist": {}},
            },
        },
        environ={},
    )  # fmt: skip
    series = SeriesStore(database)
    pulls = PullStore(database)
    ingestor = Ingestor(Spool(tmp_path / "spool"), series, clock=time.time)
    performer = RemoteWorklistPerformer(
        PerformedStore(database),
        lambda: settings.sources,
        PullService(pulls, lambda: settings.sources, ingestor, series, node_ae_title="N",
                    clock=time.time),
        pulls,
        JobQueue(database),
        series,
        lambda: settings.rules,
        lambda: settings.destinations,
        default_tasks=lambda: settings.worklist.tasks,
        node_ae_title="N",
        clock=time.time,
    )  # fmt: skip

    def rule_for(source: str, scheme: str, code: str) -> str | None:
        item = Dataset()
        item.ScheduledWorkitemCodeSequence = DicomSequence([_code(scheme, code, "x")])
        worklist = settings.sources[source]
        assert isinstance(worklist, DicomWebSourceSettings)
        rule = performer._rule_for(worklist, item)
        return rule.name if rule is not None else None

    # The source's own map wins; a rule no longer active maps nothing.
    assert rule_for("own", "99AINODE", "LUNGS") == "chest"
    assert rule_for("own", "99AINODE", "ORGANS") is None
    assert rule_for("own", "99X", "OLD") is None
    # A source without one uses the node's worklist.tasks, rules only (a plugin name there
    # is for the node's own workitems: the performer runs rules).
    assert rule_for("shared", "99AINODE", "ORGANS") == "chest"
    assert rule_for("shared", "99AINODE", "DENOISE") is None
    assert rule_for("shared", "99AINODE", "LUNGS") is None
