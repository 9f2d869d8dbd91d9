"""Retention: the policy (which series go and why) and one pass over a real state database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.cli.main import main
from node.config import RetentionSettings, Settings
from node.orchestration.retention_run import run_pass
from node.retention import DAY, SeriesUsage, plan
from node.state.audit import AuditLog
from node.state.db import Database
from node.state.dicom_audit import DicomAudit, EventType
from node.state.retention import RetentionStore

# Every store test here runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.state_backends

NOW = 1_800_000_000.0
MB = 1024 * 1024


def usage(uid: str, days_ago: float | None, **kw: object) -> SeriesUsage:
    fields: dict[str, object] = {
        "series_uid": uid,
        "study_uid": "1.2.3",
        "complete": True,
        "last_finished": None if days_ago is None else NOW - days_ago * DAY,
        "active_jobs": 0,
        "last_job_failed": False,
        "shadow": False,
        "instance_count": 3,
        "spool_bytes": 10 * MB,
        "result_bytes": 1 * MB,
    }
    fields.update(kw)
    return SeriesUsage(**fields)  # type: ignore[arg-type]


SETTINGS = RetentionSettings(spool_days=7, results_days=30, failed_days=30, high_watermark_mb=100)


def test_age_spool_then_results() -> None:
    series = [usage("new", 1), usage("week", 8), usage("month", 31)]
    got = {d.usage.series_uid: d for d in plan(series, now=NOW, settings=SETTINGS)}
    assert set(got) == {"week", "month"}
    assert (got["week"].spool, got["week"].results, got["week"].reason) == (True, False, "age")
    assert (got["month"].spool, got["month"].results) == (True, True)
    assert got["month"].bytes == 11 * MB


def test_already_purged_parts_are_not_planned_again() -> None:
    series = [usage("a", 8, spool_purged=True), usage("b", 31, spool_purged=True)]
    got = plan(series, now=NOW, settings=SETTINGS)
    assert [(d.usage.series_uid, d.spool, d.results) for d in got] == [("b", False, True)]


def test_failed_inputs_kept_longer() -> None:
    series = [usage("failed", 8, last_job_failed=True), usage("done", 8)]
    assert [d.usage.series_uid for d in plan(series, now=NOW, settings=SETTINGS)] == ["done"]
    old = [usage("failed", 31, last_job_failed=True)]
    assert [d.spool for d in plan(old, now=NOW, settings=SETTINGS)] == [True]


@pytest.mark.parametrize(
    "protected",
    [
        usage("x", 100, active_jobs=1),  # queued, running or exporting job
        usage("x", 100, complete=False),  # still receiving
        usage("x", None),  # no job finished yet
        usage("x", 100, shadow=True),  # a shadow comparison needs it
    ],
)
def test_never_deleted(protected: SeriesUsage) -> None:
    assert plan([protected], now=NOW, settings=SETTINGS, free_bytes=0) == []


def test_shadow_deletable_when_not_kept() -> None:
    settings = SETTINGS.model_copy(update={"keep_shadow": False})
    assert len(plan([usage("x", 100, shadow=True)], now=NOW, settings=settings)) == 1


def test_watermark_deletes_oldest_first_until_enough() -> None:
    # Nothing is old enough by age; 15 MB short of the 100 MB high watermark:
    # the two oldest (11 MB each) go, the newest stays; failed ones last.
    series = [
        usage("newest", 1),
        usage("oldest", 5),
        usage("middle", 3),
        usage("failed", 6, last_job_failed=True),
        usage("busy", 6, active_jobs=1),
    ]
    got = plan(series, now=NOW, settings=SETTINGS, free_bytes=85 * MB)
    assert [d.usage.series_uid for d in got] == ["oldest", "middle"]
    assert all(d.reason == "watermark" and d.spool and d.results for d in got)
    assert plan(series, now=NOW, settings=SETTINGS, free_bytes=100 * MB) == []


def test_watermark_counts_age_deletions_first() -> None:
    series = [usage("old", 8), usage("young", 1)]
    # 15 MB short: 'old' goes by age (10 MB spool), then its results (1 MB) and 'young'.
    got = plan(series, now=NOW, settings=SETTINGS, free_bytes=85 * MB)
    assert [(d.usage.series_uid, d.reason) for d in got] == [
        ("old", "watermark"),
        ("young", "watermark"),
    ]
    got = plan(series, now=NOW, settings=SETTINGS, free_bytes=95 * MB)
    assert [(d.usage.series_uid, d.reason, d.results) for d in got] == [("old", "age", False)]


def test_config_validated_eagerly() -> None:
    settings = Settings()
    assert (settings.retention.spool_days, settings.retention.results_days) == (7, 30)
    with pytest.raises(ValueError, match="cron"):
        RetentionSettings(schedule="every night")
    with pytest.raises(ValueError, match="min_free_disk_mb"):
        Settings.model_validate(
            {"node": {"min_free_disk_mb": 512}, "retention": {"high_watermark_mb": 256}}
        )


def _series(db: Database, root: Path, uid: str, *, job_state: str | None, finished: float) -> None:
    spool = root / "spool" / uid
    spool.mkdir(parents=True)
    with db.transaction() as cursor:
        cursor.execute(
            "INSERT INTO series (series_uid, study_uid, first_received, last_received,"
            " instance_count, state, completed_at) VALUES (?, '1.2.3', 0, 0, 2, 'complete', 0)",
            (uid,),
        )
        for n in range(2):
            path = spool / f"{n}.dcm"
            path.write_bytes(b"x" * 1000)
            cursor.execute(
                "INSERT INTO instances (sop_uid, series_uid, study_uid, sop_class_uid,"
                " transfer_syntax, path, size, received_at)"
                " VALUES (?, ?, '1.2.3', '1.2', '1.2', ?, 1000, 0)",
                (f"{uid}.{n}", uid, str(path)),
            )
        if job_state is not None:
            result = root / "results" / uid
            result.mkdir(parents=True)
            (result / "seg.dcm").write_bytes(b"y" * 500)
            cursor.execute(
                "INSERT INTO jobs (series_uid, study_uid, generation, rule, plugin, state,"
                " result_dir, created_at, finished_at, updated_at)"
                " VALUES (?, '1.2.3', 1, 'r', 'p', ?, ?, 0, ?, 0)",
                (uid, job_state, str(result), finished if job_state != "queued" else None),
            )


def test_pass_deletes_files_rows_and_audits(database: Database, tmp_path: Path) -> None:
    old = NOW - 40 * DAY
    _series(database, tmp_path, "1.9.1", job_state="done", finished=old)
    _series(database, tmp_path, "1.9.2", job_state="queued", finished=old)
    dry = run_pass(database, SETTINGS, now=NOW, free=None, dry_run=True)
    assert [(e["series_uid"], e["bytes"]) for e in dry] == [("1.9.1", 2500)]
    assert (tmp_path / "spool" / "1.9.1" / "0.dcm").exists()
    assert AuditLog(database).entries(action="retention") == []

    done = run_pass(database, SETTINGS, now=NOW, free=None, dry_run=False)
    assert done == dry
    assert not (tmp_path / "spool" / "1.9.1" / "0.dcm").exists()
    assert not (tmp_path / "results" / "1.9.1").exists()
    assert (tmp_path / "spool" / "1.9.2" / "0.dcm").exists()  # queued job: kept
    count = database.query("SELECT COUNT(*) AS n FROM instances WHERE series_uid = '1.9.1'")
    assert count[0]["n"] == 0
    assert database.query("SELECT * FROM series WHERE series_uid = '1.9.1'")  # history kept
    mark = RetentionStore(database).purge_mark("1.9.1")
    assert mark is not None and mark.spool_purged_at == NOW and mark.results_purged_at == NOW
    (entry,) = AuditLog(database).entries(action="retention")
    assert entry.target == "series:1.9.1"
    assert (entry.after["reason"], entry.after["bytes"], entry.after["instances"]) == (
        "age",
        2500,
        2,
    )
    (dicom,) = DicomAudit(database).events(event_type=EventType.INSTANCES_DELETED.value)
    assert (dicom.series_uid, dicom.instances, dicom.actor) == ("1.9.1", 2, "retention")
    assert dicom.detail == "age: spool and results, 2500 bytes"
    assert run_pass(database, SETTINGS, now=NOW, free=None, dry_run=False) == []


def test_cli_dry_run_json_and_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(f"node:\n  data_dir: {tmp_path}\nretention:\n  high_watermark_mb: 1024\n")
    db = Database(tmp_path / "state.sqlite3")
    _series(db, tmp_path, "1.9.1", job_state="done", finished=1.0)  # finished in 1970
    db.close()
    assert main(["retention", "--config", str(config), "--dry-run", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["dry_run"] and [e["series_uid"] for e in out["deletions"]] == ["1.9.1"]
    assert (tmp_path / "spool" / "1.9.1" / "0.dcm").exists()
    assert main(["retention", "--config", str(config)]) == 0
    assert "1 series, 2500 bytes deleted" in capsys.readouterr().out
    assert not (tmp_path / "spool" / "1.9.1" / "0.dcm").exists()
    assert main(["retention", "--config", str(config), "--dry-run"]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("retention:\n  schedule: nightly\n")
    assert main(["retention", "--config", str(bad)]) == 2


def test_rerun_of_purged_series_refused(database: Database, tmp_path: Path) -> None:
    from node.admin.service import AdminService
    from node.errors import Conflict
    from node.orchestration.registry import PluginRegistry

    _series(database, tmp_path, "1.9.1", job_state="done", finished=NOW - 40 * DAY)
    admin = AdminService(database, PluginRegistry.discover(), clock=lambda: NOW)
    (job,) = admin.queue.jobs(series_uid="1.9.1")
    run_pass(database, SETTINGS, now=NOW, free=None, dry_run=False)
    with pytest.raises(Conflict, match="deleted by retention"):
        admin.rerun_job(job.id, "alice")
    with pytest.raises(Conflict, match="deleted by retention"):
        admin.retry_job(job.id, "alice")
    assert len(admin.queue.jobs(series_uid="1.9.1")) == 1


@pytest.mark.slow
def test_node_runs_a_pass_when_free_space_is_below_the_high_watermark(tmp_path: Path) -> None:
    import time

    from node.app import Node
    from node.config import settings_from_mapping
    from tools.net import free_ports

    dicom, http = free_ports(2)
    settings = settings_from_mapping(
        {
            "node": {
                "data_dir": str(tmp_path),
                "dicom_port": dicom,
                "http_port": http,
                "min_free_disk_mb": 0,
            },
            # No disk has this much free: every check finds it below the watermark.
            "retention": {"high_watermark_mb": 10**12, "watermark_check_seconds": 5},
        },
        environ={},
    )
    node = Node(settings)
    _series(node.db, tmp_path, "1.9.1", job_state="done", finished=time.time() - 60)
    spooled = tmp_path / "spool" / "1.9.1" / "0.dcm"
    node.start()
    try:
        deadline = time.monotonic() + 20
        while spooled.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        node.stop()
    assert not spooled.exists()
    db = Database(tmp_path / "state.sqlite3")
    (entry,) = AuditLog(db).entries(action="retention")
    db.close()
    assert entry.after["reason"] == "watermark"


@pytest.mark.slow
def test_api_shows_usage_and_deletions_and_refuses_rerun(tmp_path: Path) -> None:
    from tests.support.admin import served_node

    with served_node(tmp_path / "node") as served:
        node = served.node
        data = node.settings.node.data_dir
        _series(node.db, data, "1.9.1", job_state="done", finished=NOW - 40 * DAY)
        _series(node.db, data, "1.9.2", job_state="failed", finished=NOW - 20 * DAY)
        (job,) = node.queue.jobs(series_uid="1.9.1")
        with served.client(served.admin_token) as client:
            response = client.get("/api/retention")
            assert response.status_code == 200, response.text
            before = response.json()
            assert before["disk"]["spool_bytes"] == 4000
            assert before["disk"]["free_bytes"] > 0 and before["deletions"] == []
            run_pass(node.db, node.settings.retention, now=NOW, free=None, dry_run=False)
            after = client.get("/api/retention").json()
            assert after["disk"]["spool_bytes"] == 2000  # the failed series is kept
            (deleted,) = after["deletions"]
            assert (deleted["series_uid"], deleted["reason"], deleted["bytes"]) == (
                "1.9.1",
                "age",
                2500,
            )
            refused = client.post(f"/api/jobs/{job.id}/rerun", json={})
            assert refused.status_code == 409
            assert "deleted by retention" in refused.text
