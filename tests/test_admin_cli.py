"""``ainode users|rules|jobs`` against a state database on disk (the same service functions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from node.cli.main import main
from node.state.db import Database
from node.state.series import SeriesStore
from tests.support.jobs import enqueue_job
from tests.support.spool import spool_series
from tools.synthetic.chest_ct import make_chest_ct, write_series


@pytest.fixture
def config(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "ainode.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "node": {"data_dir": str(tmp_path / "data")},
                "rules": [{"name": "chest", "match": {"Modality": "CT"}, "plugin": "ct_lungs"}],
            }
        )
    )
    for variable in ("AINODE_DATA_DIR", "AINODE_CONFIG"):
        monkeypatch.delenv(variable, raising=False)
    return path


def test_users_add_from_stdin(config: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("a-long-password\n"))
    assert (
        main(
            [
                "users",
                "add",
                "alice",
                "--role",
                "admin",
                "--password-stdin",
                "--config",
                str(config),
            ]
        )
        == 0
    )
    assert "alice added with role admin" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("short\n"))
    assert main(["users", "add", "bob", "--password-stdin", "--config", str(config)]) == 1
    assert "at least 10 characters" in capsys.readouterr().err


def test_rules_validate_and_test(config: Path, tmp_path: Path, capsys) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump(
            {
                "rules": [
                    {
                        "name": "head",
                        "match": {"SeriesDescription": {"regex": "(?i)head"}},
                        "plugin": "ct_lungs",
                    },
                ]
            }
        )
    )
    assert main(["rules", "validate", str(rules), "--config", str(config)]) == 0
    assert "head: valid" in capsys.readouterr().out
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump([{"name": "x", "match": {"Modalty": "CT"}, "plugin": "y"}]))
    assert main(["rules", "validate", str(broken), "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "rules[0].match.Modalty" in err and "rules[0].plugin" in err
    datasets, _ = make_chest_ct(
        n_slices=2, rows=16, columns=16, seed=1, series_description="Head routine"
    )
    file = write_series(datasets, tmp_path / "s")[0]
    assert main(["rules", "test", "--file", str(file), "--config", str(config)]) == 0
    assert "FIRES    chest (ct_lungs)" in capsys.readouterr().out
    assert (
        main(["rules", "test", "--file", str(file), "--rules", str(rules), "--config", str(config)])
        == 0
    )
    assert "FIRES    head" in capsys.readouterr().out
    assert main(["rules", "test", "--series", "1.2.3", "--config", str(config)]) == 1
    assert "no series 1.2.3" in capsys.readouterr().err


def test_rules_test_against_a_stored_series(config: Path, tmp_path: Path, capsys) -> None:
    """``--series UID`` reads the header of a series the node stored (spool + state DB)."""
    assert main(["rules", "list", "--config", str(config)]) == 0  # creates and seeds the DB
    datasets, _ = make_chest_ct(
        n_slices=3, rows=16, columns=16, seed=2, series_description="Head routine"
    )
    db = Database(tmp_path / "data" / "state.sqlite3")
    spool_series(SeriesStore(db), datasets, tmp_path / "data" / "spool", now=1.0)
    db.close()
    uid = str(datasets[0].SeriesInstanceUID)
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "head",
                    "match": {"SeriesDescription": "Head routine"},
                    "plugin": "ct_lungs",
                },
                {"name": "mr-only", "match": {"Modality": "MR"}, "plugin": "ct_lungs"},
            ]
        )
    )
    capsys.readouterr()
    assert main(["rules", "test", "--series", uid, "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines() == ["FIRES    chest (ct_lungs)"]
    assert (
        main(["rules", "test", "--series", uid, "--rules", str(rules), "--config", str(config)])
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "FIRES    head (ct_lungs)"
    assert lines[1].startswith("no       mr-only (ct_lungs)  not met: Modality")
    argv = ["rules", "test", "--series", uid, "--json", "--config", str(config)]
    assert main(argv) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert (result["rule"], result["fires"], result["failed"]) == ("chest", True, [])


def test_jobs_list_show_retry(config: Path, tmp_path: Path, capsys) -> None:
    assert main(["rules", "list", "--config", str(config)]) == 0  # creates and seeds the DB
    db = Database(tmp_path / "data" / "state.sqlite3")
    from node.state.jobs import JobQueue

    queue = JobQueue(db)
    job_id = enqueue_job(queue, 1.0, series_uid="1.2.3", study_uid="1.2")
    queue.claim_next(2.0)
    queue.fail(job_id, "InputRejected: too few slices", 3.0)
    db.close()
    capsys.readouterr()
    assert main(["jobs", "list", "--state", "failed", "--config", str(config)]) == 0
    assert "too few slices" in capsys.readouterr().out
    assert main(["jobs", "retry", str(job_id), "--config", str(config)]) == 0
    assert f"job {job_id} is queued again" in capsys.readouterr().out
    assert main(["jobs", "show", str(job_id), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "retried" in out and "by cli:" in out
    assert main(["jobs", "retry", str(job_id), "--config", str(config)]) == 1
    assert "only failed, skipped, cancelled, done jobs" in capsys.readouterr().err


def test_jobs_list_state_skipped_and_retry(config: Path, tmp_path: Path, capsys) -> None:
    """A skipped job is listed apart from failures and can be run again like a failed one."""
    assert main(["rules", "list", "--config", str(config)]) == 0  # creates and seeds the DB
    db = Database(tmp_path / "data" / "state.sqlite3")
    from node.state.jobs import JobQueue

    queue = JobQueue(db)
    skipped = enqueue_job(queue, 1.0, series_uid="1.2.3", study_uid="1.2")
    failed = enqueue_job(queue, 1.0, series_uid="1.2.4", study_uid="1.2")
    queue.claim_next(2.0)
    checks = [{"check": "noise", "message": "noise: 60.0 HU (validated on 5-30)"}]
    queue.skip(skipped, "skipped by the input-quality gate: noise", 3.0, source="quality",
               checks=checks)  # fmt: skip
    queue.claim_next(2.0)
    queue.fail(failed, "RuntimeError: broken", 3.0)
    db.close()
    capsys.readouterr()
    assert main(["jobs", "list", "--state", "skipped", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "skipped by the input-quality gate" in out and "broken" not in out
    assert main(["jobs", "retry", str(skipped), "--config", str(config)]) == 0
    assert f"job {skipped} is queued again" in capsys.readouterr().out


def test_job_destination_and_source_verbs(config: Path, tmp_path: Path, capsys) -> None:
    """The API's admin actions have CLI verbs: --json output, exit 0 ok / 1 refused / 2 usage."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    raw = yaml.safe_load(config.read_text())
    raw["destinations"] = {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": closed_port}}
    raw["sources"] = {
        "orthanc": {"kind": "dimse", "ae_title": "ORTHANC", "host": "h", "port": 4242}
    }
    config.write_text(yaml.safe_dump(raw))
    assert main(["rules", "list", "--config", str(config)]) == 0  # creates and seeds the DB
    db = Database(tmp_path / "data" / "state.sqlite3")
    from node.state.jobs import JobQueue

    job_id = enqueue_job(JobQueue(db), 1.0, series_uid="1.2.3", study_uid="1.2")
    db.close()
    capsys.readouterr()
    cfg = ["--config", str(config)]
    assert main(["jobs", "priority", str(job_id), "7", "--json", *cfg]) == 0
    assert json.loads(capsys.readouterr().out)["priority"] == 7
    assert main(["jobs", "cancel", str(job_id), *cfg]) == 0
    assert f"job {job_id} is cancelled" in capsys.readouterr().out
    assert main(["jobs", "cancel", str(job_id), *cfg]) == 1
    assert capsys.readouterr().err.startswith("ainode: ")
    assert main(["jobs", "rerun", str(job_id), "--plugin", "nope", *cfg]) == 1
    assert "unknown plugin 'nope'" in capsys.readouterr().err
    assert main(["jobs", "rerun", str(job_id), "--json", *cfg]) == 0
    rerun = json.loads(capsys.readouterr().out)
    assert rerun["id"] != job_id and rerun["state"] == "queued"
    assert main(["jobs", "cancel", "999", *cfg]) == 1
    assert main(["destinations", "list", "--json", *cfg]) == 0
    assert json.loads(capsys.readouterr().out)["pacs"]["port"] == closed_port
    assert main(["destinations", "echo", "pacs", "--json", *cfg]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False
    assert main(["destinations", "echo", "nowhere", *cfg]) == 1
    assert "nowhere" in capsys.readouterr().err
    assert main(["pull", "orthanc", "--study", "1.2.826.0.1.3680043.8.498.5", "--json", *cfg]) == 0
    pull = json.loads(capsys.readouterr().out)
    assert (pull["source"], pull["state"], pull["origin"][:4]) == ("orthanc", "queued", "cli:")
    assert main(["pull", "nope", "--study", "1.2.3", *cfg]) == 1
    assert "no source named 'nope'" in capsys.readouterr().err
    assert main(["pull", "orthanc", *cfg]) == 1
    assert "give study_uid, series_uid or both" in capsys.readouterr().err
    assert main(["pulls", "--json", *cfg]) == 0
    assert [p["id"] for p in json.loads(capsys.readouterr().out)] == [pull["id"]]
    with pytest.raises(SystemExit) as usage:
        main(["jobs", "priority", str(job_id), *cfg])
    assert usage.value.code == 2
    # through the console script
    result = subprocess.run(
        [sys.executable, "-m", "node", "sources", "list", "--json", *cfg],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (source,) = json.loads(result.stdout)
    assert (source["name"], source["kind"], source["port"]) == ("orthanc", "dimse", 4242)
    result = subprocess.run(
        [sys.executable, "-m", "node", "jobs", "cancel", str(job_id), *cfg],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and result.stderr.startswith("ainode: ")


def test_series_complete_from_the_cli_queues_its_jobs(config: Path, tmp_path: Path, capsys) -> None:
    """`ainode series complete UID` does what POST /api/series/{uid}/complete does, without
    the node running in the same process: completed and dispatched in one transaction."""
    from node.state.series import SeriesStore
    from tests.support.spool import spool_series
    from tools.synthetic.chest_ct import make_chest_ct

    assert main(["rules", "list", "--config", str(config)]) == 0  # creates and seeds the DB
    datasets, _ = make_chest_ct(n_slices=3, rows=16, columns=16, seed=93)
    db = Database(tmp_path / "data" / "state.sqlite3")
    store = SeriesStore(db)
    spool_series(store, datasets, tmp_path / "data" / "spool", now=1.0)
    uid = str(datasets[0].SeriesInstanceUID)
    capsys.readouterr()
    cfg = ["--config", str(config)]
    assert main(["series", "complete", uid, "--json", *cfg]) == 0
    done = json.loads(capsys.readouterr().out)
    assert (done["state"], done["generation"], done["instances"]) == ("complete", 1, 3)
    assert len(done["job_ids"]) == 1
    row = store.series(uid)
    assert row is not None and row.state == "complete" and row.dispatched_generation == 1
    assert main(["series", "complete", uid, *cfg]) == 1  # refused: already complete
    assert "already complete" in capsys.readouterr().err
    assert main(["series", "complete", "1.2.999", *cfg]) == 1
    assert "no series 1.2.999" in capsys.readouterr().err
    db.close()


def test_destination_verbs_add_update_remove(config: Path, tmp_path: Path, capsys) -> None:
    """``destinations add/update/remove`` save through AdminService; secrets stay masked."""
    cfg = ["--config", str(config)]
    flags = ["--ae-title", "PACS2", "--host", "127.0.0.1", "--port", "11112"]
    assert (
        main(["destinations", "add", "pacs2", *flags, "--results", "seg,sr", "--json", *cfg]) == 0
    )
    view = json.loads(capsys.readouterr().out)
    assert (view["ae_title"], view["port"], view["results"]) == ("PACS2", 11112, ["seg", "sr"])
    assert main(["destinations", "add", "pacs2", *flags, *cfg]) == 1  # already there
    assert capsys.readouterr().err.startswith("ainode: ")
    assert main(["destinations", "add", "bad", "--ae-title", "X" * 20, "--host", "h", *cfg]) == 1
    assert "ae_title" in capsys.readouterr().err
    stow = tmp_path / "stow.yaml"
    stow.write_text(
        yaml.safe_dump(
            {
                "kind": "dicomweb",
                "url": "http://127.0.0.1:1/dicom-web",
                "auth": {"type": "basic", "username": "u", "password": "s3cret-pass"},
            }
        )
    )
    assert main(["destinations", "update", "pacs2", "--file", str(stow), *cfg]) == 0
    assert "destination pacs2 updated" in capsys.readouterr().out
    assert main(["destinations", "update", "pacs2", "--file", str(stow), "--json", *cfg]) == 0
    out = capsys.readouterr().out
    assert "s3cret-pass" not in out and json.loads(out)["auth"]["password"] == "********"
    assert main(["destinations", "update", "nowhere", "--file", str(stow), *cfg]) == 1
    assert "nowhere" in capsys.readouterr().err
    assert main(["destinations", "remove", "pacs2", "--json", *cfg]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": "pacs2"}
    assert main(["destinations", "remove", "pacs2", *cfg]) == 1
    assert main(["destinations", "list", "--json", *cfg]) == 0
    assert "pacs2" not in json.loads(capsys.readouterr().out)
    with pytest.raises(SystemExit) as usage:
        main(["destinations", "add", "x", "--file", str(stow), "--json-body", "{}", *cfg])
    assert usage.value.code == 2


def test_destination_kinds_come_from_the_registry(config: Path, capsys) -> None:
    """``destinations kinds`` lists the registered kinds; ``--kind`` picks one, and an
    unknown kind is refused naming the known ones."""
    cfg = ["--config", str(config)]
    assert main(["destinations", "kinds", "--json"]) == 0
    kinds = json.loads(capsys.readouterr().out)
    assert [k["name"] for k in kinds] == ["dimse", "dicomweb"]
    assert "url" in [f["name"] for f in kinds[1]["fields"]]
    body = ["--json-body", '{"url": "http://127.0.0.1:1/dicom-web"}']
    assert main(["destinations", "add", "web", "--kind", "dicomweb", *body, "--json", *cfg]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "dicomweb"
    assert main(["destinations", "add", "odd", "--kind", "ftp", *body, *cfg]) == 1
    assert "unknown destination kind 'ftp' (known: dicomweb, dimse)" in capsys.readouterr().err
    assert main(["destinations", "list", *cfg]) == 0
    assert capsys.readouterr().out.split() == ["web", "dicomweb", "http://127.0.0.1:1/dicom-web"]


def test_rule_verbs_add_update_order_restore_replay_remove(
    config: Path, tmp_path: Path, capsys
) -> None:
    cfg = ["--config", str(config)]
    rule = tmp_path / "rule.yaml"
    rule.write_text(
        yaml.safe_dump({"name": "mr-brain", "match": {"Modality": "MR"}, "plugin": "ct_lungs"})
    )
    assert main(["rules", "add", "--file", str(rule), "--json", *cfg]) == 0
    added = json.loads(capsys.readouterr().out)
    assert (added["name"], added["version"]) == ("mr-brain", 1)
    assert main(["rules", "add", "--file", str(rule), *cfg]) == 1  # the name is taken
    assert capsys.readouterr().err.startswith("ainode: ")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "match": {}, "plugin": "no-such-plugin"}))
    assert main(["rules", "add", "--file", str(bad), *cfg]) == 1
    assert "no-such-plugin" in capsys.readouterr().err
    rule.write_text(
        yaml.safe_dump(
            {
                "name": "mr-brain",
                "match": {"Modality": "MR"},
                "plugin": "ct_lungs",
                "enabled": False,
            }
        )
    )
    assert main(["rules", "update", str(added["id"]), "--file", str(rule), *cfg]) == 0
    assert "version 2" in capsys.readouterr().out
    assert main(["rules", "restore", str(added["id"]), "1", "--json", *cfg]) == 0
    restored = json.loads(capsys.readouterr().out)
    assert (restored["version"], restored["enabled"]) == (3, True)
    assert main(["rules", "restore", str(added["id"]), "99", *cfg]) == 1
    assert main(["rules", "list", *cfg]) == 0
    ids = [int(line.split()[0]) for line in capsys.readouterr().out.splitlines()]
    assert main(["rules", "order", *map(str, reversed(ids)), "--json", *cfg]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == list(reversed(ids))
    assert main(["rules", "order", str(ids[0]), *cfg]) == 1  # not every rule
    capsys.readouterr()
    assert main(["rules", "replay", "--remove-id", str(added["id"]), "--json", *cfg]) == 0
    assert json.loads(capsys.readouterr().out)["series"] == 0
    assert main(["rules", "replay", "--days", "0", *cfg]) == 1
    assert "days" in capsys.readouterr().err
    assert main(["rules", "remove", str(added["id"]), "--json", *cfg]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == added["id"]
    assert main(["rules", "remove", str(added["id"]), *cfg]) == 1


def test_user_and_token_verbs(config: Path, monkeypatch, capsys) -> None:
    import subprocess
    import sys
    import time

    cfg = ["--config", str(config)]
    monkeypatch.setenv("AINODE_NEW_PASSWORD", "a-long-password")
    assert main(["users", "add", "root", "--role", "admin", *cfg]) == 0
    capsys.readouterr()
    assert main(["users", "add", "carol", "--json", *cfg]) == 0
    assert json.loads(capsys.readouterr().out)["role"] == "viewer"
    assert main(["users", "modify", "carol", "--role", "admin", "--disable", "--json", *cfg]) == 0
    carol = json.loads(capsys.readouterr().out)
    assert (carol["username"], carol["role"], carol["disabled"]) == ("carol", "admin", True)
    assert main(["users", "modify", "carol", *cfg]) == 1
    assert "nothing to change" in capsys.readouterr().err
    assert main(["users", "modify", "nobody", "--enable", *cfg]) == 1
    capsys.readouterr()
    assert main(["users", "tokens", "add", "root", "--expires-in-days", "2", "--json", *cfg]) == 0
    token = json.loads(capsys.readouterr().out)
    assert token["token"] and token["expires_at"] == pytest.approx(time.time() + 2 * 86400, abs=600)
    at = ["--expires-at", "2030-01-31T18:00:00"]
    assert main(["users", "tokens", "add", "root", *at, *cfg]) == 1
    assert "needs a time zone" in capsys.readouterr().err
    assert (
        main(["users", "tokens", "add", "root", "--expires-at", "2030-01-31T18:00:00Z", *cfg]) == 0
    )
    assert "shown once" in capsys.readouterr().out
    with pytest.raises(SystemExit) as usage:
        main(["users", "tokens", "add", "root", "--expires-in-days", "1", *at, *cfg])
    assert usage.value.code == 2
    assert main(["users", "tokens", "remove", str(token["id"]), "--json", *cfg]) == 0
    assert json.loads(capsys.readouterr().out)["revoked"] is True
    assert main(["users", "remove", "carol", "--json", *cfg]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": "carol"}
    # the last admin cannot go; through the console script
    result = subprocess.run(
        [sys.executable, "-m", "node", "users", "remove", "root", *cfg],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and result.stderr.startswith("ainode: "), result.stderr


def test_destinations_echo_of_an_unsaved_destination(config: Path, capsys) -> None:
    """As POST /api/destinations/echo: a destination given by its fields is echoed unsaved."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    scp = AE(ae_title="ECHOSCP")
    scp.add_supported_context(Verification)
    server = scp.start_server(("127.0.0.1", 0), block=False)
    port = server.server_address[1]
    cfg = ["--config", str(config)]
    try:
        fields = ["--ae-title", "ECHOSCP", "--host", "127.0.0.1", "--port", str(port)]
        assert main(["destinations", "echo", *fields, "--json", *cfg]) == 0
        assert json.loads(capsys.readouterr().out)["ok"] is True
        body = json.dumps({"ae_title": "ECHOSCP", "host": "127.0.0.1", "port": port})
        assert main(["destinations", "echo", "--json-body", body, *cfg]) == 0
        assert "(unsaved): ok" in capsys.readouterr().out
    finally:
        server.shutdown()
    assert main(["destinations", "echo", *fields, *cfg]) == 1  # nobody listens now
    assert "echo failed" in capsys.readouterr().err
    assert main(["destinations", "echo", "pacs", "--host", "h", *cfg]) == 2
    assert main(["destinations", "list", "--json", *cfg]) == 0
    assert "(unsaved)" not in capsys.readouterr().out  # nothing was saved


def test_jobs_list_and_show_give_the_eta_of_queued_jobs(
    config: Path, tmp_path: Path, capsys
) -> None:
    """From a finished job's rate (2 s per instance): the next job of 10 instances starts
    now and is done in 20 s; a routine without history has no estimate; ended jobs none."""
    import re
    import time

    from node.state.jobs import JobQueue
    from tests.conftest import FakeClock
    from tests.support.history import finished_job, receive_series

    assert main(["rules", "list", "--config", str(config)]) == 0  # creates and seeds the DB
    db = Database(tmp_path / "data" / "state.sqlite3")
    queue, series = JobQueue(db), SeriesStore(db)
    clock = FakeClock(time.time() - 600)
    done = finished_job(queue, series, clock, series_uid="1.9.1", instances=5, run_seconds=10.0)
    receive_series(series, clock, "1.9.2", 10)
    waiting = enqueue_job(queue, clock(), series_uid="1.9.2")
    unknown = enqueue_job(queue, clock(), series_uid="1.9.2", plugin="ct_organs")
    db.close()
    capsys.readouterr()
    assert main(["jobs", "list", "--config", str(config)]) == 0
    lines = {int(line.split()[0]): line for line in capsys.readouterr().out.splitlines()}
    assert re.search(r"starts ~\d\d:\d\d, done ~\d\d:\d\d", lines[waiting]), lines[waiting]
    assert "eta unknown" in lines[unknown]
    assert "starts ~" not in lines[done] and " - " in lines[done]
    assert main(["jobs", "show", str(waiting), "--json", "--config", str(config)]) == 0
    eta = json.loads(capsys.readouterr().out)["eta"]
    assert eta["seconds_to_finish"] == pytest.approx(20.0, abs=0.01)
    assert eta["estimated_start"].endswith("Z") and "ct_lungs" in eta["basis"]
    assert main(["jobs", "show", str(waiting), "--config", str(config)]) == 0
    assert "eta: starts ~" in capsys.readouterr().out
