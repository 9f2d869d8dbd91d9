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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from node.admin.audit import AuditLog
from node.api.app import create_app
from node.app import Node
from node.cli import main
from node.completion import CompletionMonitor
from node.config import BUILT_IN_CHEST_RULE, DestinationSettings
from node.devtools.node_process import NodeProcess
from node.devtools.orthanc import OrthancServer
from node.export.exporter import Exporter
from node.jobs.queue import JobQueue
from node.results.manifest import check_results, write_manifest
from node.runtime.plugin import Accepts, InferencePlugin, Prediction
from node.runtime.registry import PluginRegistry
from node.state.db import Database
from node.state.series import InstanceRecord, SeriesStore
from node.synthetic.chest_ct import make_chest_ct, write_series
from tests.support.dcmtk import StoreSCP, storescu
from tests.support.jobs import enqueue_series, job_with_results
from tests.support.net import free_port, wait_until
from tests.support.node import stepped_settings
from tests.support.pacs import node_config, one_result_each, orthanc_for_node
from tests.support.spool import spool_series

RULE = {**BUILT_IN_CHEST_RULE}


def _db_rows(node: NodeProcess, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(node.data_dir / "state.sqlite3") as db:
        return list(db.execute(sql))


def _restart_after_fault(
    tmp_path: Path, config: dict[str, Any], fault: str, files: list[Path]
) -> NodeProcess:
    """Start a node armed with ``fault``, send ``files``, wait for the fault to kill it and
    start it again (unarmed) on the same data directory; return the running node."""
    armed = NodeProcess(config, workdir=tmp_path / "node", env={"AINODE_FAULT": fault})
    with armed:
        storescu(armed.dicom_port, files, "SCANNER", called_ae=armed.ae_title)
        wait_until(lambda: not armed.running(), 120, message=f"node killed at {fault}")
        assert f"point={fault}" in armed.log_text()
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
    assert main(arguments) == 2
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
