"""Admin services on a real SQLite database: rule precedence and versions, users, audit, jobs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from node.admin.rules import parse_rule, subject_from_json
from node.admin.service import AdminService
from node.config import RuleSettings
from node.errors import Conflict, InvalidInput
from node.orchestration.registry import PluginRegistry
from node.state.db import Database
from node.state.jobs import JobQueue
from tests.support.jobs import enqueue_job, job_with_results
from tests.support.postgres import INTEGRITY_ERRORS

# Every store test here runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.state_backends

CHEST = RuleSettings(name="chest", match={"Modality": "CT"}, plugin="ct_lungs")


@pytest.fixture
def admin(database, clock) -> AdminService:
    return AdminService(database, PluginRegistry.discover(), clock=clock)


def test_yaml_rules_seed_once_then_the_database_decides(tmp_path: Path, clock) -> None:
    registry = PluginRegistry.discover()
    db = Database(tmp_path / "state.sqlite3")
    first = AdminService(db, registry, clock=clock)
    first.seed_from_config([CHEST], {})
    first.update_rule(
        first.rules.by_name("chest").id,
        {"name": "chest", "match": {"Modality": "MR"}, "plugin": "ct_lungs"},
        "alice",
    )
    db.close()
    # A restart with different YAML rules keeps the database's rules.
    db = Database(tmp_path / "state.sqlite3")
    second = AdminService(db, registry, clock=clock)
    other = RuleSettings(name="other", match={"Modality": "PT"}, plugin="ct_lungs")
    second.seed_from_config([other], {})
    assert [r.name for r in second.rules.active()] == ["chest"]
    assert second.rules.active()[0].match == {"Modality": "MR"}
    db.close()


def test_deleting_every_rule_does_not_reseed(admin: AdminService) -> None:
    admin.seed_from_config([CHEST], {})
    admin.delete_rule(admin.rules.by_name("chest").id, "alice")
    admin.seed_from_config([CHEST], {})
    assert admin.rules.active() == []


def test_versions_and_restore_including_a_deleted_rule(admin: AdminService, clock) -> None:
    created = admin.create_rule({"name": "a", "match": "Modality: CT", "plugin": "ct_lungs"}, "bob")
    clock.advance(10)
    admin.update_rule(created.id, {"name": "a", "match": {}, "plugin": "ct_lungs"}, "carol")
    admin.delete_rule(created.id, "dave")
    versions = admin.rules.versions(created.id)
    assert [(v.version, v.action, v.user) for v in versions] == [
        (3, "deleted", "dave"),
        (2, "updated", "carol"),
        (1, "created", "bob"),
    ]
    restored = admin.restore_rule(created.id, 1, "erin")
    assert restored.id == created.id and restored.version == 4
    assert restored.rule.match == {"Modality": "CT"}
    with pytest.raises(InvalidInput, match="deletion"):
        admin.restore_rule(created.id, 3, "erin")
    actions = [e.action for e in admin.audit_entries()]
    assert actions == ["rule.restore", "rule.delete", "rule.update", "rule.create"]


def test_rule_errors_name_the_field() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_rule(
            {"name": "x", "match": {"Modalty": "CT"}, "plugin": "nope", "send_to": ["pacs"]},
            plugins={"ct_lungs"},
            destinations=set(),
        )
    fields = dict(caught.value.problems)
    assert "match.Modalty" in fields and "not a DICOM keyword" in fields["match.Modalty"]
    with pytest.raises(InvalidInput) as caught:
        parse_rule(
            {"name": "x", "match": {"Modality": "CT"}, "plugin": "nope", "send_to": ["pacs"]},
            plugins={"ct_lungs"},
            destinations=set(),
        )
    assert dict(caught.value.problems).keys() == {"plugin", "send_to[0]"}
    with pytest.raises(InvalidInput) as caught:
        parse_rule(
            {"name": "x", "match": "a: [", "plugin": "ct_lungs"},
            plugins={"ct_lungs"},
            destinations=set(),
        )
    assert caught.value.problems[0][0] == "match" and "line" in caught.value.problems[0][1]


def test_dicom_json_header_is_a_subject() -> None:
    subject = subject_from_json({"00080060": {"vr": "CS", "Value": ["CT"]}})
    assert subject.value("Modality") == "CT"
    assert subject_from_json({"Modality": "MR"}).value("Modality") == "MR"


def test_audit_log_is_append_only(admin: AdminService, database: Database) -> None:
    admin.create_rule({"name": "a", "match": {}, "plugin": "ct_lungs"}, "bob")
    with pytest.raises(INTEGRITY_ERRORS, match="append-only"), database.transaction() as c:
        c.execute("UPDATE audit SET user = 'mallory'")
    with pytest.raises(INTEGRITY_ERRORS, match="append-only"), database.transaction() as c:
        c.execute("DELETE FROM audit")
    assert admin.audit_entries()[0].user == "bob"


def test_sessions_expire_and_passwords_are_hashed(admin: AdminService, clock, database) -> None:
    user = admin.add_user("alice", "correct horse", "admin", "setup")
    stored = database.query("SELECT password_hash FROM users")[0]["password_hash"]
    assert stored.startswith("$argon2") and "correct horse" not in stored
    assert admin.users.authenticate("alice", "wrong password") is None
    assert admin.users.authenticate("alice", "correct horse") == user
    secret, _ = admin.users.open_session(user, clock(), 60)
    assert admin.users.session(secret, clock()) is not None
    clock.advance(61)
    assert admin.users.session(secret, clock()) is None
    with pytest.raises(InvalidInput, match="10 characters"):
        admin.add_user("bob", "short", "viewer", "alice")
    with pytest.raises(Conflict, match="last enabled admin"):
        admin.update_user("alice", "alice", role="viewer")


#: A job of rule ``r`` and plugin ``p`` on series 1.2 of study 1.1.
JOB = {"series_uid": "1.2", "study_uid": "1.1", "rule": "r", "plugin": "p"}


def test_idle_sessions_end_and_use_keeps_them_alive(admin: AdminService, clock) -> None:
    user = admin.add_user("alice", "correct horse", "admin", "setup")
    secret, _ = admin.users.open_session(user, clock(), 8 * 3600)
    for _ in range(4):  # a request every 50 s keeps a 60-s idle limit from ending it
        clock.advance(50)
        assert admin.users.session(secret, clock(), idle_seconds=60) is not None
    clock.advance(61)
    assert admin.users.session(secret, clock(), idle_seconds=60) is None
    # An idle session is deleted: it does not come back with a longer limit.
    assert admin.users.session(secret, clock(), idle_seconds=3600) is None


def test_sessions_of_an_older_database_get_an_idle_clock(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    connection = sqlite3.connect(path)
    connection.executescript(
        "CREATE TABLE users (username TEXT PRIMARY KEY, password_hash TEXT NOT NULL,"
        " role TEXT NOT NULL, created_at REAL NOT NULL, disabled INTEGER NOT NULL DEFAULT 0);"
        "CREATE TABLE sessions (id_hash TEXT PRIMARY KEY, username TEXT NOT NULL,"
        " csrf_token TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL);"
        "INSERT INTO sessions VALUES ('h', 'alice', 'c', 100.0, 900.0);"
    )
    connection.close()
    db = Database(path)
    (row,) = db.query("SELECT last_seen_at FROM sessions")
    assert row["last_seen_at"] == 100.0
    db.close()


def test_cancel_while_running_is_not_undone_by_the_worker(database, clock, tmp_path) -> None:
    queue = JobQueue(database)
    job_id = enqueue_job(queue, clock(), **JOB, destinations=["pacs"])
    assert queue.claim_next(clock()).id == job_id
    queue.cancel(job_id, clock(), by="alice")
    queue.inference_done(job_id, tmp_path, clock())
    queue.fail(job_id, "late failure", clock())
    job = queue.get(job_id)
    assert job.state == "cancelled"
    assert [e.event for e in queue.events(job_id)][-3:] == [
        "cancelled",
        "results_written",
        "error_after_cancel",
    ]


def test_retry_resends_when_results_exist(database, clock, tmp_path) -> None:
    queue = JobQueue(database)
    job_id = job_with_results(queue, clock, tmp_path, **JOB)
    queue.fail(job_id, "export failed after 5 attempts", clock())
    assert queue.retry(job_id, clock(), by="alice").state == "exporting"
    queue.fail(job_id, "plugin crashed", clock())
    (tmp_path / "gone").mkdir()
    other = enqueue_job(queue, clock(), **{**JOB, "series_uid": "1.3"})
    queue.claim_next(clock())
    queue.fail(other, "plugin crashed", clock())
    assert queue.retry(other, clock(), by="alice").state == "queued"


def test_old_jobs_table_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    connection = sqlite3.connect(path)
    connection.executescript(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, series_uid TEXT NOT NULL,"
        " study_uid TEXT NOT NULL, generation INTEGER NOT NULL, rule TEXT NOT NULL,"
        " plugin TEXT NOT NULL, destinations TEXT NOT NULL DEFAULT '[]',"
        " priority INTEGER NOT NULL DEFAULT 5, state TEXT NOT NULL DEFAULT 'queued'"
        " CHECK (state IN ('queued', 'running', 'exporting', 'done', 'failed')),"
        " attempts INTEGER NOT NULL DEFAULT 0, export_attempts INTEGER NOT NULL DEFAULT 0,"
        " next_attempt_at REAL, error TEXT, result_dir TEXT,"
        " pending_destinations TEXT NOT NULL DEFAULT '[]', created_at REAL NOT NULL,"
        " started_at REAL, finished_at REAL, updated_at REAL NOT NULL);"
        "INSERT INTO jobs (series_uid, study_uid, generation, rule, plugin, created_at,"
        " updated_at) VALUES ('1.2', '1.1', 1, 'r', 'p', 0, 0);"
    )
    connection.close()
    db = Database(path)
    queue = JobQueue(db)
    assert queue.cancel(1, 1.0, by="alice").state == "cancelled"
    # The current states include 'skipped' (a table from before it is rebuilt too).
    second = enqueue_job(queue, 2.0, **{**JOB, "series_uid": "1.3"})
    queue.claim_next(2.0)
    queue.skip(second, "input refused", 3.0, source="accepts", checks=[])
    assert queue.get(second).state == "skipped"
    db.close()
