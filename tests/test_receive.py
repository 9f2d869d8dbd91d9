"""The DICOM listener against real clients: dcmtk storescu/echoscu and a pynetdicom SCU."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE, build_context

from node.config import NodeSettings
from node.dicom import status
from node.dicom.scp import StorageSCP
from node.orchestration.ingest import Ingestor, Outcome
from node.spool import Spool
from node.state.series import InstanceRecord, SeriesStore
from tests.support.dcmtk import storescu as send
from tests.support.net import free_port, wait_until
from tests.support.scu import associate
from tests.support.spool import incoming_instance
from tools.node_process import NodeProcess
from tools.synthetic.chest_ct import make_chest_ct, write_series

# Every store test here runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.state_backends

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


@pytest.fixture
def series_files(tmp_path_factory) -> list[Path]:
    datasets, _ = make_chest_ct(n_slices=20, rows=64, columns=64, seed=3)
    return write_series(datasets, tmp_path_factory.mktemp("series"))


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set after the preamble and file meta group."""
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    return path.read_bytes()[132 + 12 + int(meta.FileMetaInformationGroupLength) :]


class Listener:
    def __init__(
        self, root: Path, database, clock, min_free_bytes: int = 0, **node: object
    ) -> None:
        self.port = free_port()
        self.spool = Spool(root / "spool")
        self.store = SeriesStore(database)
        self.database = database
        self.ingestor = Ingestor(self.spool, self.store, clock=clock, min_free_bytes=min_free_bytes)
        settings = NodeSettings(
            ae_title="AINODE", dicom_port=self.port, bind_address="127.0.0.1", **node
        )
        self.scp = StorageSCP(settings, self.ingestor)

    def spooled(self) -> list[Path]:
        return sorted(p for p in self.spool.root.rglob("*") if p.is_file())


@pytest.fixture
def listener(tmp_path, database, clock):
    node = Listener(tmp_path, database, clock)
    node.scp.start()
    yield node
    node.scp.stop()


def storescu(port: int, files: list[Path], *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "storescu",
            *options,
            "-aet",
            "SCANNER",
            "-aec",
            "AINODE",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_echoscu(listener):
    result = subprocess.run(
        ["echoscu", "-aec", "AINODE", "127.0.0.1", str(listener.port)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_storescu_series_is_spooled_byte_for_byte(listener, series_files):
    result = storescu(listener.port, series_files)
    assert result.returncode == 0, result.stderr
    spooled = listener.spooled()
    assert len(spooled) == len(series_files)
    first = pydicom.dcmread(series_files[0])
    expected = listener.spool.path_for(
        first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID
    )
    assert expected in spooled
    # Written as received: the data set bytes after the file meta are identical.
    assert dataset_bytes(series_files[0]) == dataset_bytes(expected)
    row = listener.store.series(first.SeriesInstanceUID)
    assert row.instance_count == len(series_files)
    assert (row.calling_ae, row.called_ae, row.modality) == ("SCANNER", "AINODE", "CT")
    assert not list(listener.spool.root.rglob("*.tmp"))


#: pydicom's own small compressed files: (file, its transfer syntax, the storescu option
#: that proposes it). The SCP must accept each as sent.
COMPRESSED = [
    ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80", "-xt"),
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5", "-xr"),
    ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90", "-xv"),
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", "-xy"),
    ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51", "-xx"),
]


@pytest.mark.parametrize(("name", "syntax", "option"), COMPRESSED, ids=[c[0] for c in COMPRESSED])
def test_compressed_instances_are_stored_as_sent_and_decode(listener, name, syntax, option):
    source = Path(get_testdata_file(name))
    result = storescu(listener.port, [source], option)
    assert result.returncode == 0, result.stderr
    (spooled,) = listener.spooled()
    stored = pydicom.dcmread(spooled)
    original = pydicom.dcmread(source)
    # Not re-encoded on the way in: the same syntax and the same compressed bytes (storescu
    # itself may correct an element's VR, so the data sets are compared element-wise).
    assert stored.file_meta.TransferSyntaxUID == syntax
    assert stored.PixelData == original.PixelData
    assert np.array_equal(stored.pixel_array, original.pixel_array)


def test_same_instance_twice_is_stored_once(listener, series_files):
    assert storescu(listener.port, series_files[:2]).returncode == 0
    assert storescu(listener.port, series_files[:2]).returncode == 0
    assert len(listener.spooled()) == 2
    series_uid = pydicom.dcmread(series_files[0]).SeriesInstanceUID
    assert listener.store.series(series_uid).instance_count == 2
    assert listener.scp.counts["duplicates"] == 2


def test_uid_reused_in_another_series_is_logged_and_the_first_copy_kept(
    listener, series_files, tmp_path, caplog
):
    """Issue 11 item 15: an instance whose SOP Instance UID the node already holds in
    another series was dropped from its series without a log line."""
    first = pydicom.dcmread(series_files[0])
    other = pydicom.dcmread(series_files[1])
    other.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.999"
    other.SOPInstanceUID = first.SOPInstanceUID
    reused = tmp_path / "reused.dcm"
    other.save_as(reused, enforce_file_format=True)
    assert storescu(listener.port, [series_files[0]]).returncode == 0
    with caplog.at_level(logging.INFO, logger="node.orchestration.ingest"):
        assert storescu(listener.port, [reused]).returncode == 0
    (record,) = [r for r in caplog.records if "reused in another series" in r.getMessage()]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert f"sop_uid={first.SOPInstanceUID} series_uid={other.SeriesInstanceUID}" in message
    assert f"kept_in_series_uid={first.SeriesInstanceUID}" in message
    assert str(first.PatientID) not in message and str(first.PatientName) not in message
    # The first copy is kept; nothing of the second is on disk or in the database.
    assert listener.spooled() == [listener.store.stored_instance(first.SOPInstanceUID)[1]]
    assert listener.store.series(other.SeriesInstanceUID) is None


class LosesTheRace(SeriesStore):
    """A store whose first look-up misses an instance that another association records
    between that look-up and this one's commit (the window of the race)."""

    def __init__(self, database, racer: Path, clock) -> None:
        super().__init__(database)
        self._racer, self._clock, self._raced = racer, clock, False

    def _race(self, sop_uid: str) -> bool:
        """Record the racer's copy on the first look-up; True when this was that look-up."""
        if self._raced:
            return False
        self._raced = True
        header = pydicom.dcmread(self._racer, stop_before_pixels=True)
        record = InstanceRecord(
            sop_uid=sop_uid,
            series_uid=str(header.SeriesInstanceUID),
            study_uid=str(header.StudyInstanceUID),
            sop_class_uid=str(header.SOPClassUID),
            transfer_syntax=str(header.file_meta.TransferSyntaxUID),
            path=self._racer,
            size=self._racer.stat().st_size,
        )
        self.record_instance(record, self._clock())
        return True

    def has_instance(self, sop_uid: str) -> bool:
        return not self._race(sop_uid) and super().has_instance(sop_uid)

    def stored_instance(self, sop_uid: str) -> tuple[str, Path] | None:
        return None if self._race(sop_uid) else super().stored_instance(sop_uid)


@pytest.mark.parametrize("same_series", [True, False])
def test_duplicate_that_loses_the_database_race_is_logged(
    tmp_path, database, clock, series_files, caplog, same_series
):
    """Issue 11 item 15: 78 of 120 concurrent duplicates lost the race between the
    look-up and the commit and left no log line (and, from another series, a stray file)."""
    racer = tmp_path / "racer.dcm"
    dataset = pydicom.dcmread(series_files[0])
    if not same_series:
        dataset.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.998"
    dataset.save_as(racer, enforce_file_format=True)
    spool = Spool(tmp_path / "spool")
    ingestor = Ingestor(spool, LosesTheRace(database, racer, clock), clock=clock)
    incoming = incoming_instance(
        dataset, series_uid=str(pydicom.dcmread(series_files[0]).SeriesInstanceUID)
    )
    with caplog.at_level(logging.INFO, logger="node.orchestration.ingest"):
        assert ingestor.accept(incoming, series_files[0].read_bytes()) is Outcome.DUPLICATE
    lines = [
        r.getMessage() for r in caplog.records if f"sop_uid={incoming.sop_uid}" in r.getMessage()
    ]
    assert len(lines) == 1, lines
    if same_series:
        assert lines[0].startswith("duplicate instance ignored") and "concurrent" in lines[0]
    else:
        assert "reused in another series" in lines[0] and "concurrent copy" in lines[0]
        assert f"kept_in_series_uid={dataset.SeriesInstanceUID}" in lines[0]
    assert [p for p in spool.root.rglob("*.dcm")] == []  # the kept copy is the racer's file


def test_concurrent_duplicates_are_each_logged_once(listener, series_files, caplog):
    """Four storescu processes send the same 20 instances at once: 20 are stored and each of
    the other 60 copies leaves exactly one log line, whether it was found already stored or
    lost the database race (issue 11 item 15: 78 of 120 such copies left none)."""
    command = ["storescu", "-aet", "SCANNER", "-aec", "AINODE", "127.0.0.1", str(listener.port)]
    with caplog.at_level(logging.INFO, logger="node.orchestration.ingest"):
        senders = [
            subprocess.Popen([*command, *map(str, series_files)], env=DCMTK_ENV) for _ in range(4)
        ]
        assert [sender.wait(timeout=60) for sender in senders] == [0] * 4
    assert len(listener.spooled()) == len(series_files)
    lines = [
        r.getMessage() for r in caplog.records if "duplicate instance ignored" in r.getMessage()
    ]
    assert len(lines) == 3 * len(series_files)
    for path in series_files:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert sum(f"sop_uid={uid} " in line for line in lines) == 3


def corrupt_copy(source: Path, target: Path) -> Path:
    """The same file cut off in the middle of its header (after the file meta)."""
    data = source.read_bytes()
    meta_end = data.index(b"\x08\x00\x05\x00")  # (0008,0005) starts the data set
    target.write_bytes(data[: meta_end + 200])
    return target


def send_with_pynetdicom(port: int, files: list[Path]) -> list[int]:
    ae = AE(ae_title="SCANNER")
    ae.requested_contexts = [build_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])]
    assoc = associate(ae, "127.0.0.1", port, ae_title="AINODE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(path).Status) for path in files]
    finally:
        assoc.release()


def test_corrupt_instance_mid_association(listener, series_files, tmp_path, caplog):
    corrupt = corrupt_copy(series_files[2], tmp_path / "corrupt.dcm")
    corrupt_uid = pydicom.dcmread(series_files[2], stop_before_pixels=True).SOPInstanceUID
    files = [*series_files[:2], corrupt, *series_files[3:]]
    with caplog.at_level(logging.WARNING, logger="node.dicom.scp"):
        statuses = send_with_pynetdicom(listener.port, files)
    assert statuses[2] in (status.CANNOT_UNDERSTAND, status.MISSING_IDENTIFIER)
    assert [s for i, s in enumerate(statuses) if i != 2] == [0] * (len(files) - 1)
    assert any(
        corrupt_uid in r.getMessage() and "refused" in r.getMessage() for r in caplog.records
    )
    spooled_names = {p.name for p in listener.spooled()}
    assert f"{corrupt_uid}.dcm" not in spooled_names
    assert len(spooled_names) == len(series_files) - 1


def test_an_association_idle_past_the_configured_timeout_is_aborted(tmp_path, database, clock):
    """``node.idle_timeout_seconds``: the node aborts an association without traffic for
    that long, and one used within it stays open."""
    node = Listener(tmp_path, database, clock, idle_timeout_seconds=1.5)
    node.scp.start()
    requestor = AE(ae_title="HOLDER")
    requestor.add_requested_context("1.2.840.10008.1.1")
    requestor.network_timeout = None  # the node, not this client, ends it
    try:
        busy = associate(requestor, "127.0.0.1", node.port, ae_title="AINODE")
        idle = associate(requestor, "127.0.0.1", node.port, ae_title="AINODE")
        assert busy.is_established and idle.is_established
        for _ in range(6):  # 3 s of echoes, each well within the timeout
            assert busy.send_c_echo().Status == 0x0000
            time.sleep(0.5)
        assert busy.is_established
        wait_until(lambda: idle.is_aborted, 30, message="idle association aborted")
        busy.release()
    finally:
        node.scp.stop()


def test_low_disk_space_refuses_with_out_of_resources(tmp_path, database, clock, series_files):
    node = Listener(tmp_path, database, clock, min_free_bytes=2**62)
    node.scp.start()
    try:
        statuses = send_with_pynetdicom(node.port, series_files[:1])
    finally:
        node.scp.stop()
    assert statuses == [status.OUT_OF_RESOURCES]
    assert node.spooled() == []


def test_failed_write_returns_a700_and_leaves_no_partial_file(listener, series_files):
    first = pydicom.dcmread(series_files[0], stop_before_pixels=True)
    blocker = listener.spool.root / first.StudyInstanceUID
    blocker.write_text("a file where the study directory should be")
    statuses = send_with_pynetdicom(listener.port, series_files[:1])
    assert statuses == [status.OUT_OF_RESOURCES]
    assert [p for p in listener.spooled() if p != blocker] == []
    assert listener.store.series(first.SeriesInstanceUID) is None


def test_dcmtk_is_installed():
    assert shutil.which("storescu") and shutil.which("echoscu")


def test_spooled_files_without_rows_are_recovered_at_start(listener, series_files):
    """Rows lost with the last commits (power failure) come back from the fsynced spool."""
    assert storescu(listener.port, series_files).returncode == 0
    series_uid = pydicom.dcmread(series_files[0], stop_before_pixels=True).SeriesInstanceUID
    with listener.database.transaction() as cursor:
        cursor.execute("SELECT sop_uid FROM instances ORDER BY sop_uid")
        for row in cursor.fetchall()[1::2]:
            cursor.execute("DELETE FROM instances WHERE sop_uid = ?", (row[0],))
        lost = len(series_files) - cursor.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    partial = listener.spooled()[0].with_name(".1.2.3.abc.tmp")
    partial.write_bytes(b"half an instance")
    assert listener.ingestor.recover() == lost
    assert not partial.exists()
    assert listener.store.known_instances() == {p.stem for p in listener.spooled()}
    assert len(listener.store.instance_paths(series_uid)) == len(series_files)
    assert listener.ingestor.recover() == 0


@pytest.mark.slow
def test_called_ae_title_is_the_one_the_sender_asked_for_and_routes(series_files, tmp_path):
    """``storescu -aec OTHER`` to a node titled AINODE: the series records OTHER (not the
    node's own title) and only the rule on ``called_ae: OTHER`` makes a job."""
    rules = [
        {"name": "own-title", "match": {"called_ae": "AINODE"}, "plugin": "ct_lungs"},
        {"name": "other-title", "match": {"called_ae": "OTHER"}, "plugin": "ct_lungs"},
    ]
    config = {"rules": rules, "completion": {"series_quiet_seconds": 0.5}}
    with NodeProcess(config, workdir=tmp_path / "node") as node:
        assert node.ae_title == "AINODE"
        send(node.dicom_port, series_files, "SCANNER", called_ae="OTHER")
        database = node.data_dir / "state.sqlite3"

        def jobs() -> list[str]:
            with sqlite3.connect(database) as db:
                return [row[0] for row in db.execute("SELECT rule FROM jobs")]

        wait_until(lambda: jobs(), 60, message="a job for the series")
        with sqlite3.connect(database) as db:
            (row,) = db.execute("SELECT calling_ae, called_ae FROM series").fetchall()
        assert row == ("SCANNER", "OTHER")
        assert jobs() == ["other-title"]
        assert "called_ae=OTHER" in node.log_text()


def test_an_instance_given_in_parts_is_written_whole_without_joining_them(
    tmp_path, database, clock, series_files
):
    """The SCP hands the file header and pynetdicom's buffer of the data set as two parts
    (no joined copy of each instance): the file and its recorded size are the whole."""
    source = series_files[0].read_bytes()
    dataset = pydicom.dcmread(series_files[0], stop_before_pixels=True)
    split = len(source) - len(dataset_bytes(series_files[0]))
    store = SeriesStore(database)
    ingestor = Ingestor(Spool(tmp_path / "spool"), store, clock=clock)
    incoming = incoming_instance(dataset)
    parts = (source[:split], memoryview(source)[split:])
    assert ingestor.accept(incoming, parts) is Outcome.STORED
    stored = store.stored_instance(incoming.sop_uid)
    assert stored is not None and stored[1].read_bytes() == source
    rows = database.query(f"SELECT size FROM instances WHERE sop_uid = '{incoming.sop_uid}'")
    assert [row["size"] for row in rows] == [len(source)]


def test_an_association_ended_normally_tells_what_it_delivered(listener, series_files, caplog):
    """The read-ahead hint: the series (UID -> instances) each normally ended association
    carried; a failing handler is logged and changes nothing for the sender."""
    delivered: list[dict[str, int]] = []
    listener.ingestor.on_delivered = lambda series: delivered.append(dict(series))
    assert storescu(listener.port, series_files[:5]).returncode == 0
    series_uid = str(pydicom.dcmread(series_files[0]).SeriesInstanceUID)
    wait_until(lambda: delivered, 30, message="on_delivered")
    assert delivered == [{series_uid: 5}]

    def fails(series: object) -> None:
        raise RuntimeError("handler broke")

    listener.ingestor.on_delivered = fails
    with caplog.at_level(logging.ERROR, logger="node.orchestration.ingest"):
        result = storescu(listener.port, series_files[5:])
        wait_until(lambda: "finished sender" in caplog.text, 30, message="logged")
    assert result.returncode == 0, result.stderr
    assert listener.store.series(series_uid).instance_count == len(series_files)
