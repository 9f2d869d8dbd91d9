# ruff: noqa: I001  (imports modules of the old commit, not of this tree)
"""Build a state database with the code from before issue 12 and print it as SQL.

How ``tests/data/state_v4.sql`` was made (it imports that commit's modules, which no longer
exist here)::

    git archive af0b3ae node | tar -x -C /tmp/state-old
    PYTHONPATH=/tmp/state-old python tests/data/make_state_v4.py > tests/data/state_v4.sql
"""

import sqlite3
import tempfile
from pathlib import Path

from node.state.audit import AuditLog
from node.state.users import UserStore
from node.state.jobs import JobQueue
from node.state.pulls import PullStore
from node.state.db import Database
from node.state.dicom_audit import DicomAudit
from node.state.series import InstanceRecord, SeriesStore

T = 1_700_000_000.0
path = Path(tempfile.mkdtemp()) / "state.db"
db = Database(path)
series = SeriesStore(db)
for n in range(3):
    series.record_instance(
        InstanceRecord(
            f"1.2.3.{n}",
            "1.2.3.100",
            "1.2.3.1",
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.840.10008.1.2.1",
            Path(f"/spool/{n}.dcm"),
            1000,
            "CT",
            "SCU",
            "AINODE",
        ),
        T + n,
    )
series.mark_complete("1.2.3.100", T + 100, quiet_seconds=10)
queue = JobQueue(db)
common = dict(
    series_uid="1.2.3.100",
    study_uid="1.2.3.1",
    generation=1,
    rule="lungs",
    destinations=["pacs"],
    priority=5,
)
done = queue.enqueue(plugin="ct_lungs", now=T + 101, **common)
queue.claim_next(T + 102)
queue.inference_done(done, Path("/results/1"), T + 110)
queue.claim_export(T + 111)
queue.add_event(done, T + 111, "sent", "pacs")
queue.finish(done, T + 112, "sent to pacs")
failed = queue.enqueue(plugin="ct_lungs", now=T + 120, **common)
queue.claim_next(T + 121)
queue.inference_done(failed, Path("/results/2"), T + 130)
queue.claim_export(T + 131)
queue.export_progress(failed, ["pacs"], T + 131, retry_at=T + 161, error="pacs: refused")
queue.fail(failed, "export failed after 2 attempts in 1 min: pacs: refused", T + 170)
skipped = queue.enqueue(plugin="ct_lungs", now=T + 180, **common)
queue.claim_next(T + 181)
queue.skip(
    skipped,
    "too few slices",
    T + 182,
    source="quality",
    checks=[{"check": "slices", "message": "3 < 20"}],
)
broken = queue.enqueue(plugin="ct_lungs", now=T + 190, **common)
queue.claim_next(T + 191)
queue.fail(broken, "RuntimeError: out of memory", T + 192)
running = queue.enqueue(plugin="ct_lungs", now=T + 200, **common)
queue.claim_next(T + 201)
queue.enqueue(plugin="ct_lungs", now=T + 210, **common)
pulls = PullStore(db)
pull = pulls.add(
    source="pacs", study_uid="1.2.3.1", series_uid=None, rule="lungs", origin="api", now=T + 300
)
pulls.claim(T + 301)
pulls.add(
    source="pacs",
    study_uid="1.2.3.2",
    series_uid="1.2.3.200",
    rule=None,
    origin="orthanc:StableStudy",
    now=T + 302,
)
pulls.expect(
    series_uid="1.2.3.100",
    study_uid="1.2.3.1",
    expected_count=3,
    source="pacs",
    rule="lungs",
    now=T + 303,
)
users = UserStore(db)
users.add("admin", "correct horse battery", "admin", T + 400)
users.create_token("admin", "ci", T + 401)
AuditLog(db).record(
    user="admin",
    action="rule.create",
    target="lungs",
    before=None,
    after={"name": "lungs"},
    now=T + 402,
)
DicomAudit(db).record(
    "instances_received",
    actor="scp",
    peer="SCU",
    study_uid="1.2.3.1",
    series_uid="1.2.3.100",
    instances=3,
    at=T + 403,
)
db.close()
connection = sqlite3.connect(path)
user_version = connection.execute("PRAGMA user_version").fetchone()[0]
print(f"-- state database written by ainode before issue 12 (schema user_version {user_version});")
print("-- made by running that commit's stores; loaded by tests/test_state_migrations.py")
print(f"PRAGMA user_version={user_version};")
for line in connection.iterdump():
    print(line)
