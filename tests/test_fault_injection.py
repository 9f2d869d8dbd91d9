"""Crash safety proven by fault injection (issue 13): SIGKILL a real node at every named
point (:mod:`node.faults`), again and again, on one data directory, with a real Orthanc as
the destination and a sender that re-sends what was cut off, as a PACS does.

At the end: every acknowledged instance is in the spool and the database, every series
ran exactly once per rule and generation, and Orthanc holds exactly one copy of each
result series.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_context, evt

from node.config import BUILT_IN_CHEST_RULE
from node.dicom.network import set_nodelay
from node.errors import DatabaseCorrupt
from node.faults import POINTS
from node.orchestration.completion import CompletionMonitor
from node.orchestration.ingest import Ingestor, Outcome
from node.spool import Spool
from node.state.db import Database, check_integrity
from node.state.series import SeriesStore
from tests.support.net import wait_until
from tests.support.pacs import node_config, orthanc_for_node
from tests.support.scu import associate
from tests.support.spool import incoming_instance, spool_series
from tools.net import LOCALHOST
from tools.node_process import NodeProcess, NodeStartError
from tools.orthanc import OrthancServer
from tools.orthanc_rest import find_series
from tools.synthetic.chest_ct import make_chest_ct, write_series

RULE = {**BUILT_IN_CHEST_RULE}

#: One node life per entry: the point it dies at and at which hit. Every point twice, the
#: ones of receive, inference and export a third time (23 kills); the counts put the scp
#: kills inside a series (mid-association).
_POINTS: list[tuple[str, int]] = [
    ("instance_received", 6),
    ("series_completed_before_dispatch", 1),
    ("inference_started", 1),
    ("instance_stored", 9),
    ("instances_synced", 4),
    ("inference_done", 1),
    ("result_file_half_written", 1),
    ("results_written", 1),
    ("export_first_object_sent", 1),
]
PLAN = _POINTS * 2 + [_POINTS[i] for i in (0, 2, 3, 7, 8)]
SLICES = 20
LIFE_TIMEOUT = 90.0


def test_a_fault_point_kills_at_the_hit_it_names() -> None:
    script = (
        "from node.faults import fault_point\n"
        "for n in range(1, 4):\n"
        "    fault_point('instance_stored'); fault_point('inference_done'); print(n, flush=True)\n"
    )

    def run(value: str | None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "AINODE_FAULT"}
        if value is not None:
            env["AINODE_FAULT"] = value
        return subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
        )

    unset = run(None)
    assert (unset.returncode, unset.stdout.split()) == (0, ["1", "2", "3"])
    second = run("instance_stored:2")
    assert (second.returncode, second.stdout.split()) == (-9, ["1"])
    first = run("inference_done")
    assert (first.returncode, first.stdout.split()) == (-9, [])
    other = run("results_written")  # armed elsewhere: no effect here
    assert (other.returncode, other.stdout.split()) == (0, ["1", "2", "3"])


@dataclass
class Source:
    """One synthetic chest CT and what the node acknowledged of it."""

    study_uid: str
    series_uid: str
    files: list[Path]
    sop_uids: list[str]
    acknowledged: set[str] = field(default_factory=set)
    sends: int = 0
    requests: int = 0

    @property
    def whole(self) -> bool:
        return self.acknowledged == set(self.sop_uids)


def _send(port: int, source: Source) -> bool:
    """C-STORE the whole series in one association (as a PACS re-sends); True when every
    instance was acknowledged with 0x0000."""
    source.sends += 1
    ae = AE(ae_title="SCANNER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.requested_contexts = [build_context("1.2.840.10008.5.1.4.1.1.2", ExplicitVRLittleEndian)]
    assoc = associate(
        ae, LOCALHOST, port, ae_title="AINODE", evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)]
    )
    if not assoc.is_established:
        return False
    try:
        for path, sop_uid in zip(source.files, source.sop_uids, strict=True):
            source.requests += 1
            response = assoc.send_c_store(path)
            if "Status" not in response or int(response.Status) != 0:
                return False
            source.acknowledged.add(sop_uid)
    finally:
        if assoc.is_established:
            assoc.release()
    return True


def _rows(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data_dir / "state.sqlite3") as db:
        return list(db.execute(sql))


def _result_series(pacs: OrthancServer, study_uid: str) -> dict[str, list[dict[str, Any]]]:
    """The study's result series by modality (Orthanc keys series and instances by UID)."""
    found: dict[str, list[dict[str, Any]]] = {"SEG": [], "SR": []}
    for series in find_series(pacs.client, study_uid):
        modality = series["MainDicomTags"].get("Modality")
        if modality in found:
            found[modality].append(series)
    return found


@pytest.mark.slow
@pytest.mark.serial(reason="restarts the node at every fault point: past 600 s beside 3 workers")
def test_kills_at_every_fault_point_lose_nothing_and_send_each_result_once(
    tmp_path: Path,
) -> None:
    sources = []
    for number in range(len(PLAN)):
        datasets, _ = make_chest_ct(n_slices=SLICES, rows=128, columns=128, seed=1300 + number)
        files = write_series(datasets, tmp_path / f"series-{number}")
        sources.append(
            Source(
                str(datasets[0].StudyInstanceUID),
                str(datasets[0].SeriesInstanceUID),
                files,
                [str(d.SOPInstanceUID) for d in datasets],
            )
        )
    kills: Counter[str] = Counter()
    started = time.monotonic()
    with orthanc_for_node(tmp_path) as (pacs, node_port):
        config = node_config(node_port, pacs, [RULE], quiet_seconds=1.0)
        config["completion"]["aborted_grace_seconds"] = 5.0
        # One receiving process: each fault kills the node's own (a receiver process
        # killed while receiving is restarted and re-records its files:
        # test_receiver_processes.py).
        config["dicom"] = {"receiver_processes": 1}
        workdir = tmp_path / "node"
        for life, (point, hit) in enumerate(PLAN):
            # Re-send as soon as the listener is up, as a PACS would: within the aborted
            # grace period, which runs from the start while the routines still load.
            node = NodeProcess(
                config,
                workdir=workdir,
                env={"AINODE_FAULT": f"{point}:{hit}"},
                wait_for_routines=False,
            )
            log_start = node.log_path.stat().st_size if node.log_path.exists() else 0
            with contextlib.suppress(NodeStartError):  # a recovered job got there first
                node.start()
            try:
                # What a PACS re-sends: every series whose association was cut, then a new one.
                for source in [s for s in sources[:life] if not s.whole] + [sources[life]]:
                    if not node.running() or not _send(node.dicom_port, source):
                        break
                wait_until(
                    lambda node=node: not node.running(),
                    LIFE_TIMEOUT,
                    message=f"life {life}: node killed at {point}:{hit}",
                )
            finally:
                node.stop()
            assert f"point={point} hit={hit}" in node.log_text()[log_start:]
            kills[point] += 1
        # The last life, unarmed: finish everything that is left.
        with NodeProcess(config, workdir=workdir, wait_for_routines=False) as node:
            for source in sources:
                if not source.whole:
                    assert _send(node.dicom_port, source), source.series_uid
            data_dir = node.data_dir

            def settled() -> bool:
                states = _rows(data_dir, "SELECT state FROM jobs")
                done = {u for (u,) in _rows(data_dir, "SELECT series_uid FROM jobs")}
                return len(done) == len(sources) and all(s in ("done", "failed") for (s,) in states)

            wait_until(settled, 240, message="every series' job done")

            def all_results() -> bool:
                found = [_result_series(pacs, s.study_uid) for s in sources]
                return all(f["SEG"] and f["SR"] for f in found)

            wait_until(all_results, 60, message="results of every series in Orthanc")
            time.sleep(1.0)  # a duplicate send, if any, would land now
            results = {s.study_uid: _result_series(pacs, s.study_uid) for s in sources}

        # Every acknowledged instance is in the database and in the spool.
        stored = dict(_rows(data_dir, "SELECT sop_uid, path FROM instances"))
        acknowledged = {uid for s in sources for uid in s.acknowledged}
        lost = sorted(uid for uid in acknowledged if uid not in stored)
        missing_files = sorted(
            uid for uid in acknowledged if uid in stored and not Path(stored[uid]).is_file()
        )
        # Every series ran exactly once per rule and generation, and ended done.
        jobs = _rows(data_dir, "SELECT series_uid, rule, generation, state FROM jobs")
        per_run = Counter((series, rule, generation) for series, rule, generation, _ in jobs)
        repeated = {key: n for key, n in per_run.items() if n > 1}
        not_done = [job for job in jobs if job[3] != "done"]
        # Orthanc holds one SEG and one SR series per source series, one instance each.
        duplicates = {
            study: {m: len(series) for m, series in found.items() if len(series) != 1}
            for study, found in results.items()
            if any(len(series) != 1 for series in found.values())
        }
        counts = {
            study: {m: [len(s["Instances"]) for s in series] for m, series in found.items()}
            for study, found in results.items()
        }
        events = Counter(e for (e,) in _rows(data_dir, "SELECT event FROM job_events"))
        sent = sum(s.requests for s in sources)
        print(
            f"\nfault injection: kills={sum(kills.values())} by point={dict(sorted(kills.items()))}"
            f" series={len(sources)} sends={sum(s.sends for s in sources)}"
            f" instances sent={sent} acknowledged={len(acknowledged)} lost={len(lost)}"
            f" missing_files={len(missing_files)} jobs={len(jobs)} not_done={len(not_done)}"
            f" repeated_runs={len(repeated)} duplicate_result_series={len(duplicates)}"
            f" requeued={events['requeued']}"
            f" stale_results_removed={events['stale_results_removed']}"
            f" seconds={time.monotonic() - started:.0f}"
        )
    assert sum(kills.values()) >= 20 and set(kills) == set(POINTS)
    assert lost == [] and missing_files == []
    assert acknowledged == {uid for s in sources for uid in s.sop_uids}
    assert repeated == {} and not_done == []
    assert {series for series, _, _, _ in jobs} == {s.series_uid for s in sources}
    assert duplicates == {}
    assert all(c == {"SEG": [1], "SR": [1]} for c in counts.values()), counts
    # A job killed while writing its results was rebuilt, not sent half-written.
    assert events["stale_results_removed"] >= 1


# -- start-up: the state database's integrity ---------------------------------------------


def _corrupted_database(path: Path) -> None:
    """A node database with some rows whose pages past the schema are overwritten."""
    db = Database(path)
    store = SeriesStore(db)
    datasets, _ = make_chest_ct(n_slices=40, rows=16, columns=16, seed=1399)
    spool_series(store, datasets, path.parent / "spool", now=1.0)
    db.close()
    with sqlite3.connect(path) as check:
        assert list(check.execute("PRAGMA quick_check")) == [("ok",)]
        page_size, pages = (
            check.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_size", "page_count")
        )
    assert pages > 6
    with path.open("r+b") as handle:  # a torn write, a bad sector: garbage over two pages
        handle.seek(page_size * (pages - 3))
        handle.write(bytes(range(256)) * (2 * page_size // 256))


def test_integrity_check_passes_a_sound_database_and_names_a_damaged_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sound = tmp_path / "sound" / "state.sqlite3"
    Database(sound).close()
    with caplog.at_level(logging.INFO, logger="node.state.db"):
        check_integrity(sound)
    assert f"database integrity check ok path={sound}" in caplog.text
    check_integrity(tmp_path / "none" / "state.sqlite3")  # a first start: nothing to check
    damaged = tmp_path / "damaged" / "state.sqlite3"
    _corrupted_database(damaged)
    with pytest.raises(DatabaseCorrupt, match="failed its integrity check") as raised:
        check_integrity(damaged)
    assert str(damaged) in str(raised.value) and "move the file" in str(raised.value)
    garbage = tmp_path / "garbage" / "state.sqlite3"
    garbage.parent.mkdir()
    garbage.write_bytes(b"not a database" * 512)
    with pytest.raises(DatabaseCorrupt, match="not a database"):
        check_integrity(garbage)


@pytest.mark.slow
def test_the_node_refuses_to_start_on_a_damaged_database(tmp_path: Path) -> None:
    node = NodeProcess(workdir=tmp_path / "node")
    _corrupted_database(node.data_dir / "state.sqlite3")
    with pytest.raises(NodeStartError, match="exited with status 3"):
        node.start()
    log_text = node.log_text()
    assert f"state database {node.data_dir / 'state.sqlite3'} failed its integrity check" in (
        log_text
    )
    assert "database integrity check failed" in log_text and "move the file" in log_text


# -- found by the harness ------------------------------------------------------------------


def test_a_resend_that_starts_with_held_instances_is_not_completed_half_way(
    tmp_path: Path, database: Database, clock
) -> None:
    """The harness saw a series cut at instance 9 completed with 19 of 20 instances while
    the sender's re-send was still going through the 19 already held (duplicates did not
    count as activity), then again as generation 2 with the 20th."""
    datasets, _ = make_chest_ct(n_slices=3, rows=16, columns=16, seed=1398)
    files = write_series(datasets, tmp_path / "series")
    store = SeriesStore(database)
    ingestor = Ingestor(Spool(tmp_path / "spool"), store, clock=clock)
    completed: list[int] = []
    monitor = CompletionMonitor(
        store,
        quiet_seconds=2,
        clock=clock,
        on_complete=lambda row: completed.append(row.generation),
    )

    def send(index: int) -> Outcome:
        dataset = datasets[index]
        return ingestor.accept(incoming_instance(dataset, modality="CT"), files[index].read_bytes())

    assert [send(0), send(1)] == [Outcome.STORED] * 2  # then the sender is cut off
    clock.advance(60)
    for index in (0, 1):  # the re-send goes through what the node holds ...
        assert send(index) is Outcome.DUPLICATE
        clock.advance(1.5)
        monitor.poll()
    assert completed == []  # ... and the series is still receiving
    assert send(2) is Outcome.STORED
    clock.advance(2.5)
    monitor.poll()
    assert completed == [1]
    row = store.series(str(datasets[0].SeriesInstanceUID))
    assert row is not None and row.instance_count == 3 and row.generation == 1
