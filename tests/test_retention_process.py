"""Retention end to end: a real node process receives and processes series over real
DICOM; the test ages them in its database; ``ainode retention --dry-run`` then a pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from node.orchestration.retention_run import tree_bytes
from node.retention import DAY
from node.state.audit import AuditLog
from node.state.db import Database
from node.state.jobs import JobQueue
from tests.support.dcmtk import storescu
from tests.support.jobs import enqueue_job
from tools.net import wait_until
from tools.node_process import PROJECT_ROOT, NodeProcess
from tools.synthetic.chest_ct import make_chest_ct, write_series

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="needs dcmtk storescu"),
]

RULE = {"name": "chest", "match": {"Modality": "CT"}, "plugin": "ct_lungs"}


def _retention(config: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", "retention", "--config", str(config), "--json", *flags],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )


def test_retention_reclaims_old_series_and_keeps_a_queued_one(tmp_path: Path) -> None:
    sent = {}
    for name, seed in (("old", 31), ("busy", 32)):
        datasets, _ = make_chest_ct(n_slices=24, rows=96, columns=96, seed=seed)
        files = write_series(datasets, tmp_path / name)
        sent[name] = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
        sent[name + "_files"] = files  # type: ignore[assignment]
    with NodeProcess({"rules": [RULE]}, workdir=tmp_path / "node") as node:
        storescu(node.dicom_port, sent["old_files"] + sent["busy_files"])  # type: ignore[operator]
        data_dir = node.data_dir

        def _done() -> bool:
            watch = Database(data_dir / "state.sqlite3")
            try:
                rows = watch.query("SELECT state FROM jobs")
            finally:
                watch.close()
            return [r["state"] for r in rows] == ["done", "done"]

        wait_until(_done, 300, message="both series processed")
    db = Database(data_dir / "state.sqlite3")
    try:
        now = time.time()
        with db.transaction() as cursor:  # both finished 40 days ago
            cursor.execute("UPDATE jobs SET finished_at = ?", (now - 40 * DAY,))
        busy = enqueue_job(JobQueue(db), now, series_uid=sent["busy"], plugin="ct_lungs")
        spool_before = tree_bytes(data_dir / "spool")
        results_before = tree_bytes(data_dir / "results")
    finally:
        db.close()

    dry = _retention(node.config_path, "--dry-run")
    assert dry.returncode == 1, dry.stderr
    planned = json.loads(dry.stdout)["deletions"]
    assert [e["series_uid"] for e in planned] == [sent["old"]]
    assert tree_bytes(data_dir / "spool") == spool_before  # nothing deleted
    assert tree_bytes(data_dir / "results") == results_before
    check = Database(data_dir / "state.sqlite3")
    try:
        still = check.query(
            "SELECT COUNT(*) AS n FROM instances WHERE series_uid = ?", (sent["old"],)
        )
        assert still[0]["n"] == 24
    finally:
        check.close()

    done = _retention(node.config_path)
    assert done.returncode == 0, done.stderr
    (deleted,) = json.loads(done.stdout)["deletions"]
    assert (deleted["series_uid"], deleted["reason"], deleted["instances"]) == (
        sent["old"],
        "age",
        24,
    )
    reclaimed = (
        spool_before
        + results_before
        - tree_bytes(data_dir / "spool")
        - tree_bytes(data_dir / "results")
    )
    print(
        f"bytes reclaimed by retention: {reclaimed}"
        f" (spool+results before: {spool_before + results_before})"
    )
    assert reclaimed == deleted["bytes"] > 0

    db = Database(data_dir / "state.sqlite3")
    try:
        kept = db.query("SELECT COUNT(*) AS n FROM instances WHERE series_uid = ?", (sent["busy"],))
        gone = db.query("SELECT COUNT(*) AS n FROM instances WHERE series_uid = ?", (sent["old"],))
        assert (kept[0]["n"], gone[0]["n"]) == (24, 0)
        assert JobQueue(db).get(busy).state == "queued"  # type: ignore[union-attr]
        history = db.query("SELECT COUNT(*) AS n FROM series WHERE series_uid = ?", (sent["old"],))
        jobs = db.query("SELECT state FROM jobs WHERE series_uid = ?", (sent["old"],))
        assert history[0]["n"] == 1 and [j["state"] for j in jobs] == ["done"]
        (entry,) = AuditLog(db).entries(action="retention")
        assert entry.action == "retention.delete"
        assert entry.target == f"series:{sent['old']}" and entry.after["bytes"] == reclaimed
        assert entry.user == "cli"
    finally:
        db.close()
