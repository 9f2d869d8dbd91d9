"""A job's objects over several associations to one destination (``associations``): the
peer stores them in parallel, and the job is ``sent`` only once every object was
acknowledged. Real peers: Orthanc, and a pynetdicom SCP that proves the overlap."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import evt

from node.config import DestinationSettings
from node.errors import ExportError
from node.export.dimse import _shares, send_files
from node.export.exporter import Exporter
from node.state.jobs import JobQueue
from tests.support.jobs import job_with_results
from tests.support.scp import StoringSCP
from tools.orthanc import DICOMWEB_PLUGIN, PYTHON_PLUGIN, OrthancServer
from tools.synthetic.chest_ct import make_chest_ct, write_series

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def result_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """One large and two small CT files, the large one in the middle."""
    folder = tmp_path_factory.mktemp("results")
    small, _ = make_chest_ct(n_slices=2, rows=64, columns=64, seed=11)
    large, _ = make_chest_ct(n_slices=1, rows=256, columns=256, seed=12)
    paths = write_series([small[0], large[0], small[1]], folder)
    return sorted(paths, key=lambda p: str(pydicom.dcmread(p).InstanceNumber) + p.name)


def uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def dest(port: int, associations: int, ae_title: str = "PACS") -> DestinationSettings:
    return DestinationSettings(
        ae_title=ae_title,
        host="127.0.0.1",
        port=port,
        timeout_seconds=10,
        associations=associations,
    )


def test_files_are_shared_out_largest_first(result_files: list[Path]) -> None:
    headers = [(p, pydicom.dcmread(p, stop_before_pixels=True)) for p in result_files]
    large = max(result_files, key=lambda p: p.stat().st_size)
    shares = _shares(headers, 2)
    assert [[p for p, _ in share] for share in shares] == [
        [large],
        [p for p in result_files if p != large],  # in the order given
    ]
    assert [[p for p, _ in share] for share in _shares(headers, 1)] == [result_files]
    assert len(_shares(headers, 8)) == 3  # never more associations than files


class StorageSCP(StoringSCP):
    """Accepts CT; records what each association stored."""

    def __init__(self) -> None:
        super().__init__("PACS", [CT])
        self.stored: dict[int, list[str]] = {}


class OverlapSCP(StorageSCP):
    """Answers success only once two associations are open at the same time (else 0xA700
    after 3 s)."""

    def __init__(self) -> None:
        super().__init__()
        self._both_open = threading.Barrier(2, timeout=3)

    def _store(self, event: evt.Event) -> int:
        with self._lock:
            first = id(event.assoc) not in self.stored
            self.stored.setdefault(id(event.assoc), [])
        if first:
            try:
                self._both_open.wait()
            except threading.BrokenBarrierError:
                return 0xA700
        with self._lock:
            self.stored[id(event.assoc)].append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000


class OneAtATimeSCP(StorageSCP):
    """Accepts one association at a time (pynetdicom rejects the next, "local limit
    exceeded", while one is open)."""

    def __init__(self) -> None:
        super().__init__()
        self.ae.maximum_associations = 1

    def _store(self, event: evt.Event) -> int:
        time.sleep(0.3)  # long enough for the second association to be tried meanwhile
        with self._lock:
            self.stored.setdefault(id(event.assoc), []).append(
                str(event.request.AffectedSOPInstanceUID)
            )
        return 0x0000


def test_two_associations_are_open_at_once(result_files: list[Path]) -> None:
    with OverlapSCP() as scp:
        acknowledged = send_files(dest(scp.port, 2), result_files, calling_ae="AINODE")
    assert [(a.path, a.status) for a in acknowledged] == [(p, 0) for p in result_files]
    large = max(result_files, key=lambda p: p.stat().st_size)
    assert sorted(scp.stored.values(), key=len) == [
        [uid(large)],
        [uid(p) for p in result_files if p != large],
    ]


def test_one_association_sends_one_after_the_other(result_files: list[Path]) -> None:
    """The same peer refuses a send over one association: the overlap above is real."""
    with OverlapSCP() as scp, pytest.raises(ExportError, match="0xA700"):
        send_files(dest(scp.port, 1), result_files, calling_ae="AINODE")


def test_a_peer_refusing_the_second_association_gets_its_files_over_one_more(
    result_files: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="node.export.dimse"), OneAtATimeSCP() as scp:
        acknowledged = send_files(dest(scp.port, 2), result_files, calling_ae="AINODE")
    assert [(a.path, a.status) for a in acknowledged] == [(p, 0) for p in result_files]
    # Every file stored once, one association at a time: the peer refused the second
    # association (or both, opened at the same moment) and got the rest over one more.
    stored = list(scp.stored.values())
    assert sorted(u for share in stored for u in share) == sorted(map(uid, result_files))
    assert len(stored) in (1, 2)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "node.export.dimse"]
    assert re.match(r"destination rejected [12] of 2 associations at once", warning)


def test_a_peer_refusing_every_association_fails_the_send(result_files: list[Path]) -> None:
    with OneAtATimeSCP() as scp:
        scp.ae.require_calling_aet = ["SOMEONE"]  # refuses this node's AE title
        with pytest.raises(ExportError, match=r"association with PACS@127\.0\.0\.1"):
            send_files(dest(scp.port, 2), result_files, calling_ae="AINODE")
    assert not scp.stored


@pytest.fixture
def orthanc_refusing(tmp_path: Path, result_files: list[Path]) -> Iterator[OrthancServer]:
    """An Orthanc whose C-STORE filter (Python plugin) refuses the large file with 0xA700
    (out of resources); the others it stores."""
    refused = uid(max(result_files, key=lambda p: p.stat().st_size))
    script = tmp_path / "refuse.py"
    script.write_text(
        "import json, orthanc\n"
        "def refuse(dicom):\n"
        "    tags = json.loads(dicom.GetInstanceSimplifiedJson())\n"
        f"    return 0xA700 if tags['SOPInstanceUID'] == '{refused}' else 0\n"
        "orthanc.RegisterIncomingCStoreInstanceFilter(refuse)\n",
        encoding="utf-8",
    )
    with OrthancServer(
        plugins=[PYTHON_PLUGIN], config_overrides={"PythonScript": str(script)}
    ) as pacs:
        yield pacs


@pytest.mark.slow
def test_a_refused_object_over_one_of_two_associations_leaves_the_job_unsent(
    database, clock, result_files: list[Path], orthanc_refusing: OrthancServer
) -> None:
    pacs = orthanc_refusing
    settings = {"pacs": dest(pacs.dicom_port, 2, pacs.aet)}
    queue = JobQueue(database)
    exporter = Exporter(queue, lambda: settings, calling_ae="AINODE", clock=clock)
    job_id = job_with_results(queue, clock, result_files[0].parent, destinations=["pacs"])
    assert exporter.run_once()
    job = queue.get(job_id)
    assert job.state == "exporting" and list(job.pending_destinations) == ["pacs"]
    assert "status 0xA700" in (job.error or "")
    assert "sent" not in [e.event for e in queue.events(job_id)]
    assert exporter.sent_counts() == {}
    stored = {
        pacs.client.get_instances_id_tags(i)["0008,0018"]["Value"]
        for i in pacs.client.get_instances()
    }
    assert stored == {uid(p) for p in result_files} - {
        uid(max(result_files, key=lambda p: p.stat().st_size))
    }


@pytest.mark.slow
def test_both_associations_deliver_to_orthanc_and_the_job_is_sent(
    database, clock, result_files: list[Path]
) -> None:
    with OrthancServer(plugins=[DICOMWEB_PLUGIN]) as pacs:
        settings = {"pacs": dest(pacs.dicom_port, 2, pacs.aet)}
        queue = JobQueue(database)
        exporter = Exporter(queue, lambda: settings, calling_ae="AINODE", clock=clock)
        job_id = job_with_results(queue, clock, result_files[0].parent, destinations=["pacs"])
        assert exporter.run_once()
        assert queue.get(job_id).state == "done"
        assert [e.event for e in queue.events(job_id)][-2:] == ["sent", "done"]
        assert len(pacs.client.get_instances()) == len(result_files)
