-- state database written by ainode before issue 12 (schema user_version 4);
-- made by running that commit's stores; loaded by tests/test_state_migrations.py
PRAGMA user_version=4;
BEGIN TRANSACTION;
CREATE TABLE api_tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    username    TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  REAL NOT NULL,
    last_used   REAL,
    revoked     INTEGER NOT NULL DEFAULT 0,
    expires_at  REAL
);
INSERT INTO "api_tokens" VALUES(1,'admin','ci','e9212cc2d07832736aa86ac929aedb16efaa06e4501e12bb23adaca7b6485732',1700000401.0,NULL,0,NULL);
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          REAL NOT NULL,
    user        TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    before      TEXT,
    after       TEXT
);
INSERT INTO "audit" VALUES(1,1700000402.0,'admin','rule.create','lungs',NULL,'{"name": "lungs"}');
CREATE TABLE destinations (
    name        TEXT PRIMARY KEY,
    definition  TEXT NOT NULL,
    updated_at  REAL NOT NULL,
    updated_by  TEXT NOT NULL
);
CREATE TABLE dicom_audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          REAL NOT NULL,
    event_type  TEXT NOT NULL,
    event_code  TEXT NOT NULL,
    outcome     INTEGER NOT NULL,
    actor       TEXT NOT NULL DEFAULT '',
    peer        TEXT NOT NULL DEFAULT '',
    destination TEXT NOT NULL DEFAULT '',
    study_uid   TEXT NOT NULL DEFAULT '',
    series_uid  TEXT NOT NULL DEFAULT '',
    instances   INTEGER NOT NULL DEFAULT 0,
    detail      TEXT NOT NULL DEFAULT ''
);
INSERT INTO "dicom_audit" VALUES(1,1700000403.0,'instances_received','110104',0,'scp','SCU','','1.2.3.1','1.2.3.100',3,'');
CREATE TABLE instances (
    sop_uid         TEXT PRIMARY KEY,
    series_uid      TEXT NOT NULL REFERENCES series (series_uid),
    study_uid       TEXT NOT NULL,
    sop_class_uid   TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    path            TEXT NOT NULL,
    size            INTEGER NOT NULL,
    received_at     REAL NOT NULL
);
INSERT INTO "instances" VALUES('1.2.3.0','1.2.3.100','1.2.3.1','1.2.840.10008.5.1.4.1.1.2','1.2.840.10008.1.2.1','/spool/0.dcm',1000,1700000000.0);
INSERT INTO "instances" VALUES('1.2.3.1','1.2.3.100','1.2.3.1','1.2.840.10008.5.1.4.1.1.2','1.2.840.10008.1.2.1','/spool/1.dcm',1000,1700000001.0);
INSERT INTO "instances" VALUES('1.2.3.2','1.2.3.100','1.2.3.1','1.2.840.10008.5.1.4.1.1.2','1.2.840.10008.1.2.1','/spool/2.dcm',1000,1700000002.0);
CREATE TABLE job_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id  INTEGER NOT NULL REFERENCES jobs (id),
    at      REAL NOT NULL,
    event   TEXT NOT NULL,
    detail  TEXT NOT NULL DEFAULT ''
);
INSERT INTO "job_events" VALUES(1,1,1700000101.0,'queued','rule=lungs plugin=ct_lungs');
INSERT INTO "job_events" VALUES(2,1,1700000102.0,'started','');
INSERT INTO "job_events" VALUES(3,1,1700000110.0,'results_written','/results/1');
INSERT INTO "job_events" VALUES(4,1,1700000111.0,'sent','pacs');
INSERT INTO "job_events" VALUES(5,1,1700000112.0,'done','sent to pacs');
INSERT INTO "job_events" VALUES(6,2,1700000120.0,'queued','rule=lungs plugin=ct_lungs');
INSERT INTO "job_events" VALUES(7,2,1700000121.0,'started','');
INSERT INTO "job_events" VALUES(8,2,1700000130.0,'results_written','/results/2');
INSERT INTO "job_events" VALUES(9,2,1700000131.0,'export_retry_scheduled','pacs: refused');
INSERT INTO "job_events" VALUES(10,2,1700000170.0,'failed','export failed after 2 attempts in 1 min: pacs: refused');
INSERT INTO "job_events" VALUES(11,3,1700000180.0,'queued','rule=lungs plugin=ct_lungs');
INSERT INTO "job_events" VALUES(12,3,1700000181.0,'started','');
INSERT INTO "job_events" VALUES(13,3,1700000182.0,'skipped','{"reason": "too few slices", "source": "quality", "checks": [{"check": "slices", "message": "3 < 20"}]}');
INSERT INTO "job_events" VALUES(14,4,1700000190.0,'queued','rule=lungs plugin=ct_lungs');
INSERT INTO "job_events" VALUES(15,4,1700000191.0,'started','');
INSERT INTO "job_events" VALUES(16,4,1700000192.0,'failed','RuntimeError: out of memory');
INSERT INTO "job_events" VALUES(17,5,1700000200.0,'queued','rule=lungs plugin=ct_lungs');
INSERT INTO "job_events" VALUES(18,5,1700000201.0,'started','');
INSERT INTO "job_events" VALUES(19,6,1700000210.0,'queued','rule=lungs plugin=ct_lungs');
CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    series_uid      TEXT NOT NULL,
    study_uid       TEXT NOT NULL,
    generation      INTEGER NOT NULL,
    rule            TEXT NOT NULL,
    plugin          TEXT NOT NULL,
    destinations    TEXT NOT NULL DEFAULT '[]',
    priority        INTEGER NOT NULL DEFAULT 5,
    state           TEXT NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'running', 'exporting', 'done', 'failed',
                                     'skipped', 'cancelled')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    export_attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    error           TEXT,
    result_dir      TEXT,
    pending_destinations TEXT NOT NULL DEFAULT '[]',
    created_at      REAL NOT NULL,
    started_at      REAL,
    finished_at     REAL,
    updated_at      REAL NOT NULL,
    shadow          INTEGER NOT NULL DEFAULT 0
);
INSERT INTO "jobs" VALUES(1,'1.2.3.100','1.2.3.1',1,'lungs','ct_lungs','["pacs"]',5,'done',1,1,NULL,NULL,'/results/1','[]',1700000101.0,1700000102.0,1700000112.0,1700000112.0,0);
INSERT INTO "jobs" VALUES(2,'1.2.3.100','1.2.3.1',1,'lungs','ct_lungs','["pacs"]',5,'failed',1,1,NULL,'export failed after 2 attempts in 1 min: pacs: refused','/results/2','["pacs"]',1700000120.0,1700000121.0,1700000170.0,1700000170.0,0);
INSERT INTO "jobs" VALUES(3,'1.2.3.100','1.2.3.1',1,'lungs','ct_lungs','["pacs"]',5,'skipped',1,0,NULL,'too few slices',NULL,'[]',1700000180.0,1700000181.0,1700000182.0,1700000182.0,0);
INSERT INTO "jobs" VALUES(4,'1.2.3.100','1.2.3.1',1,'lungs','ct_lungs','["pacs"]',5,'failed',1,0,NULL,'RuntimeError: out of memory',NULL,'[]',1700000190.0,1700000191.0,1700000192.0,1700000192.0,0);
INSERT INTO "jobs" VALUES(5,'1.2.3.100','1.2.3.1',1,'lungs','ct_lungs','["pacs"]',5,'running',1,0,NULL,NULL,NULL,'[]',1700000200.0,1700000201.0,NULL,1700000201.0,0);
INSERT INTO "jobs" VALUES(6,'1.2.3.100','1.2.3.1',1,'lungs','ct_lungs','["pacs"]',5,'queued',0,0,NULL,NULL,NULL,'[]',1700000210.0,NULL,NULL,1700000210.0,0);
CREATE TABLE meta (
    key     TEXT PRIMARY KEY,
    value   TEXT NOT NULL
);
CREATE TABLE pulls (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    source      TEXT NOT NULL,
    study_uid   TEXT NOT NULL,
    series_uid  TEXT,
    rule        TEXT,
    origin      TEXT NOT NULL DEFAULT 'api',
    state       TEXT NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued', 'running', 'done', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    not_before  REAL NOT NULL DEFAULT 0,
    detail      TEXT NOT NULL DEFAULT '{}',
    error       TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
INSERT INTO "pulls" VALUES(1,'pacs','1.2.3.1',NULL,'lungs','api','running',1,0.0,'{}',NULL,1700000300.0,1700000301.0);
INSERT INTO "pulls" VALUES(2,'pacs','1.2.3.2','1.2.3.200',NULL,'orthanc:StableStudy','queued',0,0.0,'{}',NULL,1700000302.0,1700000302.0);
CREATE TABLE rule_versions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    rule_id     INTEGER NOT NULL,
    version     INTEGER NOT NULL,
    name        TEXT NOT NULL,
    definition  TEXT,
    action      TEXT NOT NULL,
    at          REAL NOT NULL,
    user        TEXT NOT NULL,
    UNIQUE (rule_id, version)
);
CREATE TABLE rules (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    position    INTEGER NOT NULL,
    definition  TEXT NOT NULL,
    version     INTEGER NOT NULL DEFAULT 1,
    updated_at  REAL NOT NULL,
    updated_by  TEXT NOT NULL
);
CREATE TABLE series (
    series_uid      TEXT PRIMARY KEY,
    study_uid       TEXT NOT NULL,
    modality        TEXT NOT NULL DEFAULT '',
    calling_ae      TEXT NOT NULL DEFAULT '',
    called_ae       TEXT NOT NULL DEFAULT '',
    first_received  REAL NOT NULL,
    last_received   REAL NOT NULL,
    instance_count  INTEGER NOT NULL DEFAULT 0,
    state           TEXT NOT NULL DEFAULT 'receiving'
                    CHECK (state IN ('receiving', 'complete')),
    completed_at    REAL,
    generation      INTEGER NOT NULL DEFAULT 0,
    -- the generation whose jobs were queued (committed with them: a lag means undispatched)
    dispatched_generation INTEGER NOT NULL DEFAULT 0,
    -- completion held (aborted association, restart mid-receive) until this time, and why
    hold_until      REAL,
    hold_reason     TEXT,
    -- when this generation's first instance arrived (the maximum receiving age counts from it)
    generation_started REAL,
    -- why this generation completed or waited other than by the quiet period (told to its jobs)
    completion_note TEXT
);
INSERT INTO "series" VALUES('1.2.3.100','1.2.3.1','CT','SCU','AINODE',1700000000.0,1700000002.0,3,'complete',1700000100.0,1,0,NULL,NULL,1700000000.0,NULL);
CREATE TABLE series_completions (
    series_uid      TEXT NOT NULL,
    generation      INTEGER NOT NULL,
    completed_at    REAL NOT NULL,
    PRIMARY KEY (series_uid, generation)
);
INSERT INTO "series_completions" VALUES('1.2.3.100',1,1700000100.0);
CREATE TABLE series_expectations (
    series_uid      TEXT PRIMARY KEY,
    study_uid       TEXT NOT NULL,
    expected_count  INTEGER,
    generation      INTEGER NOT NULL,
    source          TEXT NOT NULL,
    rule            TEXT,
    set_at          REAL NOT NULL
);
INSERT INTO "series_expectations" VALUES('1.2.3.100','1.2.3.1',3,1,'pacs','lungs',1700000303.0);
CREATE TABLE series_info (
    series_uid          TEXT PRIMARY KEY,
    study_date          TEXT NOT NULL DEFAULT '',
    study_description   TEXT NOT NULL DEFAULT '',
    series_description  TEXT NOT NULL DEFAULT '',
    accession_number    TEXT NOT NULL DEFAULT '',
    body_part           TEXT NOT NULL DEFAULT '',
    series_number       TEXT NOT NULL DEFAULT ''
);
CREATE TABLE sessions (
    id_hash     TEXT PRIMARY KEY,
    username    TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    csrf_token  TEXT NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL NOT NULL,
    last_seen_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE users (
    username        TEXT PRIMARY KEY,
    password_hash   TEXT NOT NULL,
    role            TEXT NOT NULL CHECK (role IN ('admin', 'viewer')),
    created_at      REAL NOT NULL,
    disabled        INTEGER NOT NULL DEFAULT 0
);
INSERT INTO "users" VALUES('admin','$argon2id$v=19$m=65536,t=3,p=4$OJlgX6aY05XWZJE0rFQvJg$//xh+uvlG04bM85JcuyYX/1ewQzO3u1FDQv8qbCT3rc','admin',1700000400.0,0);
CREATE INDEX series_state ON series (state, last_received);
CREATE INDEX dicom_audit_at ON dicom_audit (at);
CREATE TRIGGER dicom_audit_no_update BEFORE UPDATE ON dicom_audit
BEGIN SELECT RAISE(ABORT, 'the DICOM audit trail is append-only'); END;
CREATE INDEX instances_series ON instances (series_uid);
CREATE INDEX jobs_state ON jobs (state, priority, id);
CREATE INDEX jobs_series ON jobs (series_uid);
CREATE INDEX jobs_finished ON jobs (finished_at);
CREATE INDEX job_events_job ON job_events (job_id, id);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE INDEX pulls_state ON pulls (state, id);
CREATE INDEX pulls_study ON pulls (study_uid);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('jobs',6);
INSERT INTO "sqlite_sequence" VALUES('job_events',19);
INSERT INTO "sqlite_sequence" VALUES('pulls',2);
INSERT INTO "sqlite_sequence" VALUES('api_tokens',1);
INSERT INTO "sqlite_sequence" VALUES('audit',1);
INSERT INTO "sqlite_sequence" VALUES('dicom_audit',1);
COMMIT;
