"""Every read query of the series, catalog, history, metrics, pull, retention and user
stores runs on both backends and answers the same (the store tests elsewhere cover the
writes and transitions; this sweeps the statements they leave out)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.state.catalog import INFO_FIELDS, CatalogStore
from node.state.connection import Connection
from node.state.events import EventCode
from node.state.history import JobHistory
from node.state.jobs import JobQueue
from node.state.metrics import MetricsQueries
from node.state.pulls import PullStore
from node.state.retention import RetentionStore
from node.state.series import InstanceRecord, SeriesStore
from node.state.users import TokenExpired, UserStore
from tests.support.jobs import enqueue_job

pytestmark = pytest.mark.state_backends

T0 = 1_700_000_000.25  # a fraction: epoch seconds must keep it on both backends
SERIES, STUDY = "1.2.840.9.1", "1.2.840.9"


def _received(database: Connection, tmp_path: Path, count: int = 3) -> SeriesStore:
    store = SeriesStore(database)
    for i in range(count):
        record = InstanceRecord(
            sop_uid=f"{SERIES}.{i}",
            series_uid=SERIES,
            study_uid=STUDY,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax="1.2.840.10008.1.2.1",
            path=tmp_path / f"{i}.dcm",
            size=3_000_000_000 + i,  # past 32 bits: a whole-slide image
            modality="CT",
            calling_ae="SCANNER",
        )
        assert store.record_instance(record, T0 + i)[0]  # a new instance
    return store


def test_series_queries(database: Connection, tmp_path: Path) -> None:
    store = _received(database, tmp_path)
    row = store.series(SERIES)
    assert row is not None and row.instance_count == 3 and row.first_received == T0
    assert store.known_instances() == {f"{SERIES}.{i}" for i in range(3)}
    assert store.has_instance(f"{SERIES}.1") and not store.has_instance("9.9")
    assert store.next_quiet_at(5.0) == T0 + 2 + 5.0
    assert [r.series_uid for r in store.quiet_series(T0 + 8, 5.0)] == [SERIES]
    assert [r.series_uid for r in store.overdue_series(T0 + 100, 50.0)] == [SERIES]
    assert store.hold([SERIES], T0 + 50, "aborted") == [SERIES]
    assert store.hold([SERIES], T0 + 60, "restart") == [SERIES]
    assert store.series(SERIES).hold_reason == "aborted; restart"  # type: ignore[union-attr]
    assert store.quiet_series(T0 + 8, 5.0) == []
    assert store.release_hold([SERIES], "released") == [SERIES]
    completed = store.mark_complete(SERIES, T0 + 10, 5.0)
    assert completed is not None and completed.state == "complete"
    assert store.completions_since(SERIES, T0) == [T0 + 10]
    assert [r.series_uid for r in store.undispatched()] == [SERIES]
    store.mark_dispatched(SERIES, 1)
    assert store.undispatched() == []
    assert [r.series_uid for r in store.complete_series_outside_study("CT", "other")] == [SERIES]
    assert len(store.instance_paths(SERIES)) == 3
    assert [r.series_uid for r in store.all_series()] == [SERIES]


def test_catalog_history_and_metrics(database: Connection, tmp_path: Path) -> None:
    _received(database, tmp_path)
    catalog = CatalogStore(database)
    info = dict.fromkeys(INFO_FIELDS, "")
    catalog.save_info(
        SERIES, {**info, "study_date": "20240501", "series_description": "Thorax Routine"}
    )
    assert catalog.stored_info(SERIES)["series_description"] == "Thorax Routine"  # type: ignore[index]
    assert catalog.series_without_info() == []
    queue = JobQueue(database)
    job_id = enqueue_job(queue, T0 + 20, series_uid=SERIES, study_uid=STUDY)
    assert queue.claim_next(T0 + 21, "me") is not None
    result_dir = tmp_path / "results"
    queue.add_event(job_id, T0 + 22, EventCode.RESULTS_WRITTEN, "seconds=1.5")
    queue.inference_done(job_id, result_dir, T0 + 23, owner="me")
    assert queue.get(job_id).state == "done"  # type: ignore[union-attr]
    # SQLite's LIKE ignores case; PostgreSQL's ILIKE does the same
    (view,) = catalog.series_views(text="thorax")
    assert view.series.series_uid == SERIES and view.jobs == {"done": 1}
    assert [j.id for j, _ in catalog.search_jobs(text="THORAX")] == [job_id]
    assert [j.id for j, _ in catalog.search_jobs(text=str(job_id))] == [job_id]
    assert catalog.finished_since(T0) == [("done", T0 + 23)]
    history = JobHistory(database)
    (sample,) = history.run_samples()
    assert sample.instances == 3
    assert history.active_jobs() == []
    assert history.stage_samples(T0)
    metrics = MetricsQueries(database)
    assert metrics.series_completions() == 0
    (durations,) = metrics.job_durations([1.0, 5.0])
    assert durations.count == 1 and durations.total_seconds == pytest.approx(2.0)
    assert durations.buckets == ((1.0, 0), (5.0, 1))
    assert metrics.export_failures() == 0 and metrics.quality_skips() == []
    assert queue.depth()["done"] == 1 and queue.depth_by_priority() == {}


def test_pull_and_retention_queries(database: Connection, tmp_path: Path) -> None:
    _received(database, tmp_path)
    pulls = PullStore(database)
    pull = pulls.add(
        source="pacs", study_uid=STUDY, series_uid=None, rule="r", origin="api", now=T0
    )
    pulls.update(pull.id, T0 + 1, state="done", series=[{"series_uid": SERIES}])
    assert json.loads(json.dumps(pulls.get(pull.id).as_json()))["state"] == "done"  # type: ignore[union-attr]
    assert [p.id for p in pulls.recent()] == [pull.id] == [p.id for p in pulls.for_study(STUDY)]
    pulls.expect(
        series_uid=SERIES, study_uid=STUDY, expected_count=3, source="pacs", rule="r", now=T0
    )
    assert pulls.counted_series() == [SERIES]  # 3 of 3 here
    pulls.expect(
        series_uid=SERIES, study_uid=STUDY, expected_count=4, source="pacs", rule="r", now=T0
    )
    assert pulls.expectation(SERIES)["expected_count"] == 4  # type: ignore[index]
    assert pulls.counted_series() == []
    assert pulls.unqueried_receiving({"SCANNER"}) == []
    assert [p.series_uid for p in pulls.study_progress(STUDY)] == [SERIES]
    retention = RetentionStore(database)
    ((usage, dirs),) = retention.usage()
    assert usage.spool_bytes == 3 * 3_000_000_000 + 3 and usage.instance_count == 3
    assert dirs == [] and retention.spool_bytes() == usage.spool_bytes
    retention.mark_purged(SERIES, spool=True, results=False, now=T0)
    retention.mark_purged(SERIES, spool=False, results=True, now=T0 + 5)
    mark = retention.purge_mark(SERIES)
    assert mark is not None and (mark.spool_purged_at, mark.results_purged_at) == (T0, T0 + 5)
    assert retention.instance_paths(SERIES) == []


def test_user_queries(database: Connection) -> None:
    users = UserStore(database)
    user = users.add("alice", "a long enough password 1", "admin", T0)
    assert users.count() == 1 and users.authenticate("alice", "a long enough password 1")
    secret, _ = users.open_session(user, T0, 3600)
    assert users.session(secret, T0 + 10, idle_seconds=60) is not None
    assert users.session(secret, T0 + 200, idle_seconds=60) is None
    token_secret, token = users.create_token("alice", "ci", T0, expires_at=T0 + 100)
    assert users.user_for_token(token_secret, T0 + 1) is not None
    with pytest.raises(TokenExpired, match="expired"):
        users.user_for_token(token_secret, T0 + 101)
    assert [t.id for t in users.tokens("alice")] == [token.id]
    assert users.revoke_token(token.id).revoked
    users.update("alice", disabled=True)
    assert users.get("alice").disabled
    assert users.authenticate("alice", "a long enough password 1") is None
