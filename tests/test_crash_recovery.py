"""Crashes and cut-off senders (issue 11, items 9-12): nothing accepted is lost or half-done.

The process-level tests kill a real node at a named point (``AINODE_FAULT``, see
:mod:`node.faults`), restart it on the same data directory and check what a real
Orthanc receives.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_context

from node.api.app import create_app
from node.app import Node
from node.cli.main import main
from node.config import BUILT_IN_CHEST_RULE, DestinationSettings
from node.contract.plugin import Accepts, InferencePlugin, Prediction
from node.export.exporter import Exporter
from node.orchestration.completion import CompletionMonitor
from node.orchestration.registry import PluginRegistry
from node.results.manifest import check_results, write_manifest
from node.state.audit import AuditLog
from node.state.db import Database
from node.state.jobs import JobQueue
from node.state.series import InstanceRecord, SeriesStore
from tests.support.admin import served_node
from tests.support.dcmtk import StoreSCP, storescu
from tests.support.jobs import enqueue_series, job_with_results
from tests.support.net import free_port, wait_until
from tests.support.node import stepped_settings
from tests.support.pacs import node_config, one_result_each, orthanc_for_node
from tests.support.scu import associate
from tests.support.spool import spool_series
from tools.node_process import NodeProcess
from tools.orthanc import OrthancServer
from tools.synthetic.chest_ct import make_chest_ct, write_series

# Every store test here runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.state_backends

RULE = {**BUILT_IN_CHEST_RULE}
HELD_EVENTS = "SELECT detail FROM job_events WHERE event = 'completion_held'"


def _db_rows(node: NodeProcess, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(node.data_dir / "state.sqlite3") as db:
        return list(db.execute(sql))


def _restart_after_fault(
    tmp_path: Path,
    config: dict[str, Any],
    fault: str,
    files: list[Path],
    check_killed: Callable[[NodeProcess], None] = lambda node: None,
) -> NodeProcess:
    """Start a node armed with ``fault``, send ``files``, wait for the fault to kill it,
    ``check_killed`` it and start it again (unarmed) on the same data directory; return the
    running node."""
    armed = NodeProcess(config, workdir=tmp_path / "node", env={"AINODE_FAULT": fault})
    with armed:
        storescu(armed.dicom_port, files, "SCANNER", called_ae=armed.ae_title)
        wait_until(lambda: not armed.running(), 120, message=f"node killed at {fault}")
        assert f"point={fault}" in armed.log_text()
        check_killed(armed)
    return NodeProcess(config, workdir=tmp_path / "node").start()


def _single_results(pacs: OrthancServer, study_uid: str) -> dict[str, Any]:
    objects = one_result_each(pacs, study_uid, ["SEG", "SR"], timeout=120)
    for dataset in objects.values():
        assert "supersedes" not in str(dataset.get("SeriesDescription", ""))
    return objects


# -- item 9: a series lost between completion and dispatch ---------------------------------


@pytest.mark.slow
def test_kill_between_completion_and_dispatch_still_runs_the_series(tmp_path: Path) -> None:
    datasets, _ = make_chest_ct(n_slices=20, rows=128, columns=128, seed=91)
    files = write_series(datasets, tmp_path / "series")
    study_uid, series_uid = datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID
    with orthanc_for_node(tmp_path) as (pacs, node_port):
        config = node_config(node_port, pacs, [RULE], quiet_seconds=1.0)
        config["completion"]["aborted_grace_seconds"] = 2.0
        node = _restart_after_fault(tmp_path, config, "series_completed_before_dispatch", files)
        with node:
            _single_results(pacs, study_uid)
            jobs = _db_rows(
                node, f"SELECT generation, state FROM jobs WHERE series_uid = '{series_uid}'"
            )
            assert [generation for generation, _ in jobs] == [1]
            # It was still receiving at the restart: held for the grace period, and says so.
            (held,) = _db_rows(
                node, "SELECT detail FROM job_events WHERE event = 'completion_held'"
            )
            assert "node restarted before the series completed" in held[0]
            wait_until(lambda: _db_rows(node, "SELECT state FROM jobs") == [("done",)], 60)


def _record(store: SeriesStore, series_uid: str, number: int, now: float) -> None:
    store.record_instance(
        InstanceRecord(
            sop_uid=f"{series_uid}.{number}",
            series_uid=series_uid,
            study_uid="1.2.3",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax="1.2.840.10008.1.2.1",
            path=Path(f"/nonexistent/{number}.dcm"),
            size=1,
            modality="CT",
        ),
        now,
    )


def test_a_failed_dispatch_keeps_the_completion_and_is_retried(database: Database, clock) -> None:
    store, queue = SeriesStore(database), JobQueue(database)
    calls: list[int] = []

    def dispatch(row: Any) -> None:
        calls.append(row.generation)
        queue.enqueue(
            series_uid=row.series_uid,
            study_uid=row.study_uid,
            generation=row.generation,
            rule="r",
            plugin="p",
            destinations=[],
            priority=5,
            now=clock(),
        )
        if len(calls) == 1:
            raise OSError("database or disk is full")

    monitor = CompletionMonitor(store, quiet_seconds=10, clock=clock, on_complete=dispatch)
    _record(store, "1.2.3.4", 1, clock())
    clock.advance(11)
    monitor.poll()
    row = store.series("1.2.3.4")
    assert row is not None and row.state == "complete" and row.dispatched_generation == 0
    assert queue.jobs() == []  # the failed dispatch's job was rolled back with it
    assert [r.series_uid for r in store.undispatched()] == ["1.2.3.4"]
    clock.advance(61)
    monitor.poll()
    assert calls == [1, 1] and len(queue.jobs()) == 1 and store.undispatched() == []
    monitor.poll()
    assert len(queue.jobs()) == 1


def test_an_admin_reruns_a_complete_series_with_the_cli(tmp_path: Path, capsys) -> None:
    config = tmp_path / "ainode.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "node": {"data_dir": str(tmp_path / "data")},
                "rules": [{"name": "chest", "match": {"Modality": "CT"}, "plugin": "ct_lungs"}],
            }
        )
    )
    datasets, _ = make_chest_ct(n_slices=2, rows=16, columns=16, seed=92)
    db = Database(tmp_path / "data" / "state.sqlite3")
    store = SeriesStore(db)
    spool_series(store, datasets, tmp_path / "data" / "spool", now=1.0)
    uid = str(datasets[0].SeriesInstanceUID)
    arguments = ["series", "rerun", uid, "--config", str(config)]
    assert main(arguments) == 1  # refused: exit 1 (2 is a usage error)
    assert "still receiving" in capsys.readouterr().err
    assert store.force_complete(uid, 2.0) is not None  # its jobs lost, as in the crash
    assert main(arguments) == 0
    assert "queued rule=chest plugin=ct_lungs" in capsys.readouterr().out
    (job,) = JobQueue(db).jobs(series_uid=uid)
    assert job.generation == 1 and job.state == "queued"
    assert [e.event for e in JobQueue(db).events(job.id)][-1] == "series_rerun"
    (entry,) = [e for e in AuditLog(db).entries() if e.action == "series.rerun"]
    assert entry.target == f"series:{uid}" and entry.user.startswith("cli")
    db.close()


# -- item 10: a partial series after an aborted association -------------------------------


def _lung_volumes(sr: Any, directory: Path) -> dict[str, float]:
    path = directory / "sr-read.dcm"
    sr.save_as(path)
    volumes = {}
    for group in hd.sr.srread(path).content.get_volumetric_roi_measurement_groups():
        (measurement,) = group.get_measurements(name=codes.SCT.Volume)
        volumes[str(group.tracking_identifier).lower()] = float(measurement.value)
    return volumes


@pytest.mark.slow
@pytest.mark.serial(reason="1 s quiet period: a stall before the abort completes the series")
def test_aborted_association_holds_the_series_until_the_resend(tmp_path: Path) -> None:
    datasets, truth = make_chest_ct(n_slices=120, rows=128, columns=128, seed=101)
    files = write_series(datasets, tmp_path / "series")
    ordered = sorted(files)  # CT_<instance number>_...: in slice order
    study_uid, series_uid = datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID
    with orthanc_for_node(tmp_path) as (pacs, node_port):
        config = node_config(node_port, pacs, [RULE], quiet_seconds=1.0)
        config["completion"]["aborted_grace_seconds"] = 600.0
        with NodeProcess(config, workdir=tmp_path / "node") as node:
            ae = AE(ae_title="SCANNER")
            ae.requested_contexts = [build_context(datasets[0].SOPClassUID, ExplicitVRLittleEndian)]
            assoc = associate(ae, "127.0.0.1", node.dicom_port, ae_title=node.ae_title)
            assert assoc.is_established
            assert [int(assoc.send_c_store(p).Status) for p in ordered[:60]] == [0] * 60
            assoc.abort()  # the sender is cut off half-way
            series = f"SELECT state, hold_reason FROM series WHERE series_uid = '{series_uid}'"
            wait_until(lambda: _db_rows(node, series)[0][1] or None, 10, message="hold")
            time.sleep(4.0)  # well past the 1 s quiet period
            ((state, reason),) = _db_rows(node, series)
            assert state == "receiving" and "aborted association from SCANNER" in reason
            assert _db_rows(node, "SELECT id FROM jobs") == []
            storescu(node.dicom_port, ordered, "SCANNER", called_ae=node.ae_title)  # the retry
            objects = _single_results(pacs, study_uid)
            volumes = _lung_volumes(objects["SR"], tmp_path)
            left = next(v for k, v in volumes.items() if "left" in k)
            assert left == pytest.approx(truth.left_lung_cm3, rel=0.03)
            ((generation,),) = _db_rows(node, "SELECT generation FROM jobs")
            assert generation == 1
            (held,) = _db_rows(
                node, "SELECT detail FROM job_events WHERE event = 'completion_held'"
            )
            assert "waited for an aborted association from SCANNER" in held[0]
            assert "after 60 instance(s)" in held[0] and "ended normally" in held[0]


# -- item 11: result files written in place --------------------------------------------------


@pytest.mark.slow
def test_kill_while_writing_results_sends_one_whole_set(tmp_path: Path) -> None:
    datasets, _ = make_chest_ct(n_slices=20, rows=128, columns=128, seed=111)
    files = write_series(datasets, tmp_path / "series")
    study_uid = datasets[0].StudyInstanceUID
    with orthanc_for_node(tmp_path) as (pacs, node_port):
        config = node_config(node_port, pacs, [RULE], quiet_seconds=1.0)

        def nothing_half_written(killed: NodeProcess) -> None:
            # Killed half-way through the first result file: no file has a result's name.
            assert not list(killed.results_dir.rglob("*.dcm"))
            assert list(killed.results_dir.rglob(".*.tmp"))  # the half-written temporary

        node = _restart_after_fault(
            tmp_path, config, "result_file_half_written", files, nothing_half_written
        )
        with node:
            objects = _single_results(pacs, study_uid)
            wait_until(lambda: _db_rows(node, "SELECT state FROM jobs") == [("done",)], 60)
            (result_dir,) = node.results_dir.glob("*/*/job-*")
            on_disk = sorted(p.name for p in result_dir.glob("*.dcm"))
            assert on_disk == sorted(
                f"{tag}_{objects[m].SOPInstanceUID}.dcm"
                for tag, m in (("seg", "SEG"), ("sr", "SR"))
            )
            assert not list(result_dir.glob(".*.tmp"))
            events = [e for (e,) in _db_rows(node, "SELECT event FROM job_events ORDER BY id")]
            assert "requeued" in events and "stale_results_removed" in events


def test_exporter_rebuilds_a_job_whose_files_are_cut_short(
    tmp_path: Path, database: Database, clock
) -> None:
    datasets, _ = make_chest_ct(n_slices=2, rows=32, columns=32, seed=112)
    result_dir = tmp_path / "job-1"
    written = [
        result_dir / path.name.replace("CT_", "seg_", 1)
        for path in write_series(datasets, result_dir / "src")
    ]
    for source, target in zip(sorted((result_dir / "src").iterdir()), written, strict=True):
        source.rename(target)
    write_manifest(result_dir, written)
    assert check_results(result_dir) is None
    with written[0].open("r+b") as handle:  # a kill, a full disk: the file is cut short
        handle.truncate(100)
    queue = JobQueue(database)
    port = free_port()
    scp = StoreSCP(port, tmp_path / "received")
    try:
        settings = {"pacs": DestinationSettings(ae_title="PACS", host="127.0.0.1", port=port)}
        exporter = Exporter(queue, lambda: settings, calling_ae="AINODE", clock=clock)
        job_id = job_with_results(queue, clock, result_dir)
        assert exporter.run_once()
        job = queue.get(job_id)
        assert job is not None and job.state == "queued" and job.result_dir is None
        (event,) = [e for e in queue.events(job_id) if e.event == "results_incomplete"]
        assert f"{written[0].name} has 100 bytes" in event.detail
        assert scp.received() == []  # nothing was sent
    finally:
        scp.stop()


# -- item 12: a job stuck running after the disk fills ---------------------------------------


class DiskFiller(InferencePlugin):
    """Labels voxels above -500 HU, after filling the disk that holds the node's data."""

    name = "disk_filler"
    version = "1.0.0"
    template = "ct_lungs"
    accepts = Accepts(modalities=("CT",))
    filler: Path

    def load(self, device: Any) -> None:
        pass

    def run(self, volume: Any, context: Any) -> Prediction:
        with open(self.filler, "wb", buffering=0) as handle:
            for size in (1 << 20, 1 << 12, 1):
                with contextlib.suppress(OSError):
                    while handle.write(b"\0" * size):
                        pass
        return Prediction(label_map=(volume.array > -500).astype(np.uint8))


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A real file system of ``size`` at ``path`` (tmpfs: root only, as in CI)."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_full_disk_fails_the_job_once_space_returns_and_readyz_says_why(tmp_path: Path) -> None:
    datasets, _ = make_chest_ct(n_slices=20, rows=32, columns=32, seed=121)
    with small_disk(tmp_path / "disk", "24m") as disk:
        settings = stepped_settings(tmp_path, {"node": {"data_dir": str(disk)}})
        registry = PluginRegistry()
        registry.register(DiskFiller)
        DiskFiller.filler = disk / "filler"
        node = Node(settings, registry=registry)
        node.start()
        try:
            client = TestClient(create_app(node))
            assert client.get("/readyz").status_code == 200
            spool_series(node.series, datasets, tmp_path / "spool", time.time())
            job_id = enqueue_series(node.queue, datasets, rule="r", plugin="disk_filler", now=1.0)
            node.worker.wake()
            ready = wait_until(
                lambda: (r := client.get("/readyz")).status_code == 503 and r.json(), 60
            )
            assert ready["checks"]["job_state_recorded"] is False
            assert f"cannot record job {job_id} as failed" in ready["problems"][0]
            assert "full" in ready["problems"][0]
            time.sleep(1.5)  # the worker keeps retrying; the job is still running meanwhile
            assert node.queue.get(job_id).state == "running"  # type: ignore[union-attr]
            DiskFiller.filler.unlink()  # space returns
            job = wait_until(
                lambda: (j := node.queue.get(job_id)) is not None and j.state == "failed" and j,
                60,
            )
            assert "full" in (job.error or "") or "No space" in (job.error or "")
            assert client.get("/readyz").status_code == 200
            assert node.admin.retry_job(job_id, "alice").state == "queued"  # retryable
        finally:
            node.stop()


def test_a_held_series_waits_the_grace_unless_the_sender_count_says_whole(
    database: Database, clock
) -> None:
    store = SeriesStore(database)
    counted: list[str] = []
    completed: list[str] = []
    monitor = CompletionMonitor(
        store,
        quiet_seconds=10,
        clock=clock,
        on_complete=lambda row: completed.append(row.series_uid),
        counted=lambda: counted,
    )
    for uid in ("1.2.3.4", "1.2.3.5"):
        _record(store, uid, 1, clock())
    assert store.hold(["1.2.3.4", "1.2.3.5"], clock() + 300, "cut off") == ["1.2.3.4", "1.2.3.5"]
    clock.advance(60)
    assert monitor.poll() == [] and completed == []  # quiet, but held
    counted.append("1.2.3.4")  # the sender reports as many instances as are held
    monitor.poll()
    assert completed == ["1.2.3.4"]
    clock.advance(241)  # the grace period is over
    monitor.poll()
    assert completed == ["1.2.3.4", "1.2.3.5"]


def test_migration_marks_old_series_dispatched_except_recent_ones_without_jobs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite3"
    db = Database(path)
    store, queue = SeriesStore(db), JobQueue(db)
    for number, uid in enumerate(("1.2.3.1", "1.2.3.2", "1.2.3.3")):
        _record(store, uid, 1, 1000.0 * number)
    store.force_complete("1.2.3.1", 100.0)  # completed two days before the others
    store.force_complete("1.2.3.2", 200_000.0)  # had its job
    store.force_complete("1.2.3.3", 200_001.0)  # lost between completion and dispatch
    queue.enqueue(
        series_uid="1.2.3.2",
        study_uid="1.2.3",
        generation=1,
        rule="r",
        plugin="p",
        destinations=[],
        priority=5,
        now=1.0,
    )
    db.close()
    with sqlite3.connect(path) as old:  # the series table as an older node left it
        for column in ("dispatched_generation", "hold_until", "hold_reason"):
            old.execute(f"ALTER TABLE series DROP COLUMN {column}")
        old.execute("PRAGMA user_version=3")  # what the nodes without these columns wrote
    migrated = Database(path)
    assert [r.series_uid for r in SeriesStore(migrated).undispatched()] == ["1.2.3.3"]
    migrated.close()


def test_an_admin_reruns_a_complete_series_over_the_api(tmp_path: Path) -> None:
    datasets, _ = make_chest_ct(n_slices=3, rows=16, columns=16, seed=93)
    files = write_series(datasets, tmp_path / "series")
    uid = str(datasets[0].SeriesInstanceUID)
    config = {"completion": {"series_quiet_seconds": 3600}, "rules": [RULE]}
    with served_node(tmp_path / "data", config) as served:
        storescu(served.dicom_port, files)
        with served.client(served.admin_token) as client:
            assert client.post(f"/api/series/{uid}/rerun").status_code == 409  # receiving
            assert client.post(f"/api/series/{uid}/complete").status_code == 200
            again = client.post(f"/api/series/{uid}/complete")
            assert again.status_code == 409
            assert f"/api/series/{uid}/rerun" in again.json()["message"]
            rerun = client.post(f"/api/series/{uid}/rerun")
            assert rerun.status_code == 201
            (job,) = rerun.json()["jobs"]
            assert job["rule"] == RULE["name"] and job["generation"] == 1
            jobs = client.get("/api/jobs", params={"series_uid": uid}).json()
            assert len(jobs) == 2
            audit = client.get("/api/audit", params={"action": "series.rerun"}).json()
            assert audit[0]["target"] == f"series:{uid}"
        with served.client(served.viewer_token) as client:
            assert client.post(f"/api/series/{uid}/rerun").status_code == 403
