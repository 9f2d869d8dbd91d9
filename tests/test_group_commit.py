"""Group commit on receive: concurrent instances share a directory fsync and a transaction,
each is answered only once its own pass is through, and a failure refuses only the
instances it concerns."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from node.errors import SpoolError
from node.orchestration.group_commit import CommitFailed, GroupCommit
from node.orchestration.ingest import IncomingInstance, Ingestor, Outcome
from node.spool import Spool, sync_directory
from node.state.series import InstanceRecord, SeriesStore
from tests.support.net import wait_until
from tools.node_process import NodeProcess
from tools.synthetic.chest_ct import make_chest_ct, write_series

# Every store test here runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.state_backends

STUDY = "1.2.826.0.1.3680043.8.498.1"


class GatedSync:
    """The real directory fsync, recording each directory; the first call waits for
    ``release`` so that instances arriving meanwhile queue for the next pass."""

    def __init__(self, fail_in: Path | None = None) -> None:
        self.calls: list[Path] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self._fail_in = fail_in

    def __call__(self, directory: Path) -> None:
        self.calls.append(directory)
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(10)
        if directory == self._fail_in:
            raise OSError(5, "Input/output error")
        sync_directory(directory)


def _record(spool: Spool, series_uid: str, number: int) -> InstanceRecord:
    sop_uid = f"{series_uid}.{number}"
    path = spool.write(STUDY, series_uid, sop_uid, b"x" * 64, sync_parent=False)
    return InstanceRecord(sop_uid, series_uid, STUDY, "1.2.840.10008.5.1.4.1.1.2", "1.2", path, 64)


def _in_threads(calls: list[Callable[[], object]]) -> tuple[list[object], list[threading.Thread]]:
    results: list[object] = [None] * len(calls)

    def run(index: int) -> None:
        try:
            results[index] = calls[index]()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    return results, threads


def _queue_behind_first(commits: GroupCommit, gate: GatedSync, calls: list[Callable[[], object]]):
    """Run ``calls[0]`` until its pass is inside the directory sync, queue the others
    behind it, then let the pass go on; return every call's result."""
    results, threads = _in_threads(calls)
    threads[0].start()
    assert gate.entered.wait(10)
    for thread in threads[1:]:
        thread.start()
    wait_until(lambda: len(commits._waiting) == len(calls) - 1, 10, message="queued")
    gate.release.set()
    for thread in threads:
        thread.join(10)
    return results


def test_instances_queued_behind_a_pass_share_one_directory_sync_and_transaction(
    tmp_path: Path, database
) -> None:
    spool = Spool(tmp_path / "spool")
    store = SeriesStore(database)
    gate = GatedSync()
    commits = GroupCommit(store, gate)
    first = _record(spool, "1.2.3.1", 1)
    queued = [_record(spool, "1.2.3.2", n) for n in (1, 2, 3)] + [_record(spool, "1.2.3.3", 1)]
    results = _queue_behind_first(
        commits, gate, [lambda r=r: commits.record(r, 100.0) for r in [first, *queued]]
    )
    assert results == [(True, False)] * 5
    # Two passes: the first instance alone, then the four that queued, one fsync per
    # directory (three instances in series 2, one in series 3).
    assert (commits.passes, commits.instances) == (2, 5)
    assert gate.calls == [first.path.parent, queued[0].path.parent, queued[3].path.parent]
    assert store.known_instances() == {r.sop_uid for r in [first, *queued]}
    assert store.series("1.2.3.2").instance_count == 3


def test_a_row_that_fails_refuses_only_its_instance(tmp_path: Path, database) -> None:
    spool = Spool(tmp_path / "spool")
    store = SeriesStore(database)
    gate = GatedSync()
    commits = GroupCommit(store, gate)
    good = [_record(spool, "1.2.4.1", n) for n in (1, 2, 3)]
    # A new series without a study UID breaks the NOT NULL constraint of its row.
    bad = _record(spool, "1.2.4.2", 1)
    bad = InstanceRecord(**{**bad.__dict__, "study_uid": None})  # type: ignore[arg-type]
    results = _queue_behind_first(
        commits,
        gate,
        [lambda r=r: commits.record(r, 100.0) for r in [good[0], good[1], bad, good[2]]],
    )
    assert results[0] == results[1] == results[3] == (True, False)
    assert isinstance(results[2], CommitFailed)
    assert re.search("not[ -]null", str(results[2]), re.IGNORECASE)  # SQLite's or PostgreSQL's
    assert commits.passes == 2  # the failed row was in the second pass with two good ones
    assert store.known_instances() == {r.sop_uid for r in good}
    assert store.series("1.2.4.2") is None


def test_a_directory_that_cannot_be_synced_refuses_its_instances_and_keeps_the_rest(
    tmp_path: Path, database, clock
) -> None:
    """Through the ingestor: instances of the failing directory get SpoolError and their
    files are removed; those of other series in the same pass, and the instance accepted
    before it, stay recorded with their files."""
    spool = Spool(tmp_path / "spool")
    store = SeriesStore(database)
    ingestor = Ingestor(spool, store, clock=clock)
    broken = spool.path_for(STUDY, "1.2.5.2", "1").parent
    gate = GatedSync(fail_in=broken)
    ingestor.commits = commits = GroupCommit(store, gate)

    def incoming(series_uid: str, number: int) -> IncomingInstance:
        return IncomingInstance(
            f"{series_uid}.{number}", "1.2.840.10008.5.1.4.1.1.2", series_uid, STUDY, "1.2"
        )

    sent = [incoming("1.2.5.1", 1), incoming("1.2.5.1", 2), incoming("1.2.5.2", 1)]
    sent += [incoming("1.2.5.2", 2), incoming("1.2.5.3", 1)]
    results = _queue_behind_first(
        commits, gate, [lambda i=i: ingestor.accept(i, b"y" * 32) for i in sent]
    )
    assert results[0] is results[1] is results[4] is Outcome.STORED
    for refused in (results[2], results[3]):
        assert isinstance(refused, SpoolError) and "Input/output error" in str(refused)
    assert store.known_instances() == {sent[i].sop_uid for i in (0, 1, 4)}
    assert sorted(p.name for p in spool.root.rglob("*.dcm")) == sorted(
        f"{sent[i].sop_uid}.dcm" for i in (0, 1, 4)
    )
    assert not list(spool.root.rglob("*.tmp"))


@pytest.mark.slow
def test_a_kill_between_the_sync_and_the_commit_is_recovered_at_start_up(tmp_path: Path) -> None:
    """The node dies in the third instance's commit pass, after its file and directory are
    synced and before its row: the two acknowledged instances are recorded, and at the
    next start the third file (synced, never acknowledged) is recorded from the spool."""
    datasets, _ = make_chest_ct(n_slices=5, rows=32, columns=32, seed=7)
    files = sorted(write_series(datasets, tmp_path / "series"))
    workdir = tmp_path / "node"
    # One receiving process: the fault is to kill the node's own (a receiver process that
    # dies is restarted, test_receiver_processes.py).
    config = {"rules": [], "dicom": {"receiver_processes": 1}}
    with NodeProcess(config, workdir=workdir, env={"AINODE_FAULT": "instances_synced:3"}) as node:
        result = subprocess.run(
            [
                "storescu",
                "-aec",
                node.ae_title,
                "127.0.0.1",
                str(node.dicom_port),
                *map(str, files),
            ],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0  # the association broke at the third instance
        wait_until(lambda: not node.running(), 20, message="node killed")
        assert "point=instances_synced hit=3" in node.log_text()
        database = node.data_dir / "state.sqlite3"
        spool = node.data_dir / "spool"
    sop = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    with sqlite3.connect(database) as db:
        recorded = {uid for (uid,) in db.execute("SELECT sop_uid FROM instances")}
    assert recorded == set(sop[:2])
    assert {p.stem for p in spool.rglob("*.dcm")} == set(sop[:3])
    with (
        NodeProcess({"rules": []}, workdir=workdir, wait_for_routines=False),
        sqlite3.connect(database) as db,
    ):
        recorded = {uid for (uid,) in db.execute("SELECT sop_uid FROM instances")}
    assert recorded == set(sop[:3])
