"""Several ingest nodes sharing one state (issue 15): each node is a connection of its own
to the same database, as two node processes are.

A series whose instances arrive on two nodes completes once and is dispatched once, the
instances name the node that received them, the export claim is a lease with an owner that
another node takes over only once it has expired, and a node's start-up touches only what
is its own (its spool files, its series, its exports).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from node.config import settings_from_mapping
from node.errors import ConfigError
from node.orchestration.completion import CompletionMonitor
from node.orchestration.ingest import IncomingInstance, Ingestor
from node.orchestration.prepare import InstancesUnreadable, check_instances_visible
from node.spool import Spool
from node.state.connection import Connection
from node.state.db import Database
from node.state.events import EventCode
from node.state.jobs import JobQueue
from node.state.lease import owner_name
from node.state.series import InstanceRecord, SeriesRow, SeriesStore
from tests.support.jobs import job_with_results
from tools.synthetic.chest_ct import make_chest_ct

QUIET = 10.0


pytestmark = pytest.mark.state_backends


@pytest.fixture
def second(database: Connection) -> Iterator[Connection]:
    """A second connection to the state of ``database``: another node's."""
    other: Connection
    if isinstance(database, Database):
        other = Database(database.path)
    else:
        from node.state.postgres import PostgresDatabase

        assert isinstance(database, PostgresDatabase)
        other = PostgresDatabase(database.url)
    yield other
    other.close()


def _record(store: SeriesStore, series_uid: str, number: int, now: float, node: str) -> bool:
    added, _ = store.record_instance(
        InstanceRecord(
            sop_uid=f"{series_uid}.{number}",
            series_uid=series_uid,
            study_uid="1.2.3",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax="1.2.840.10008.1.2.1",
            path=Path(f"/spool/{node}/{number}.dcm"),
            size=1,
            modality="CT",
            received_by=node,
        ),
        now,
    )
    return added


def _monitor(
    store: SeriesStore, queue: JobQueue, clock, dispatched: list[str]
) -> CompletionMonitor:
    def dispatch(row: SeriesRow) -> None:
        dispatched.append(row.series_uid)
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

    return CompletionMonitor(store, quiet_seconds=QUIET, clock=clock, on_complete=dispatch)


def test_a_series_split_over_two_nodes_completes_once_with_every_instance(
    database: Connection, second: Connection, clock
) -> None:
    stores = {"node-a": SeriesStore(database), "node-b": SeriesStore(second)}
    queues = {"node-a": JobQueue(database), "node-b": JobQueue(second)}
    for number in range(6):  # alternating, as two associations through a load balancer
        node = "node-a" if number % 2 == 0 else "node-b"
        assert _record(stores[node], "1.2.3.4", number, clock(), node)
        clock.advance(1.0)
    # The same instance again through the other node: stored once, counted once.
    assert not _record(stores["node-b"], "1.2.3.4", 0, clock(), "node-b")
    row = stores["node-b"].series("1.2.3.4")
    assert row is not None and row.instance_count == 6
    dispatched: list[str] = []
    monitors = [_monitor(stores[n], queues[n], clock, dispatched) for n in stores]
    assert [m.poll() for m in monitors] == [[], []]  # not quiet yet
    clock.advance(QUIET)
    completed = [m.poll() for m in monitors]
    assert sorted(len(c) for c in completed) == [0, 1]  # exactly one node completed it
    assert dispatched == ["1.2.3.4"]
    assert [m.poll() for m in monitors] == [[], []]
    (job,) = queues["node-a"].jobs()
    assert job.generation == 1
    paths = stores["node-a"].instance_paths("1.2.3.4")
    assert len(paths) == 6  # the job's input: every instance, whichever node received it
    receivers = stores["node-b"].instance_receivers("1.2.3.4")
    assert sorted(receivers.values()) == ["node-a"] * 3 + ["node-b"] * 3
    assert receivers[Path("/spool/node-b/1.dcm")] == "node-b"


def test_two_nodes_recording_the_same_series_at_once_count_each_instance_once(
    database: Connection, second: Connection, clock
) -> None:
    stores = [SeriesStore(database), SeriesStore(second)]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def receive(index: int) -> None:
        start.wait()
        try:
            for number in range(15):  # both get every instance of five new series
                for series in range(5):
                    _record(stores[index], f"1.2.3.20.{series}", number, clock(), f"n{index}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=receive, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for series in range(5):
        row = stores[0].series(f"1.2.3.20.{series}")
        assert row is not None and row.instance_count == 15
        assert len(stores[1].instance_paths(f"1.2.3.20.{series}")) == 15


def test_a_late_instance_on_the_other_node_reopens_the_series_for_a_new_generation(
    database: Connection, second: Connection, clock
) -> None:
    a, b = SeriesStore(database), SeriesStore(second)
    _record(a, "1.2.3.5", 0, clock(), "node-a")
    clock.advance(QUIET)
    dispatched: list[str] = []
    assert len(_monitor(a, JobQueue(database), clock, dispatched).poll()) == 1
    added, reopened = b.record_instance(
        InstanceRecord(
            "1.2.3.5.1", "1.2.3.5", "1.2.3", "1.2", "1.2.840.10008.1.2.1", Path("/x"), 1
        ),
        clock(),
    )
    assert (added, reopened) == (True, True)
    clock.advance(QUIET)
    rows = _monitor(b, JobQueue(second), clock, dispatched).poll()
    assert [row.generation for row in rows] == [2]
    assert [j.generation for j in JobQueue(database).jobs()] == [1, 2]


def test_an_undispatched_series_is_dispatched_by_one_node_only(
    database: Connection, second: Connection, clock
) -> None:
    a = SeriesStore(database)
    _record(a, "1.2.3.6", 0, clock(), "node-a")
    clock.advance(QUIET)

    def failing(row: SeriesRow) -> None:
        raise RuntimeError("rules unreadable")

    CompletionMonitor(a, quiet_seconds=QUIET, clock=clock, on_complete=failing).poll()
    row = a.series("1.2.3.6")
    assert row is not None and row.state == "complete" and row.dispatched_generation == 0
    dispatched: list[str] = []
    node_a = _monitor(a, JobQueue(database), clock, dispatched)

    class Interleaved(SeriesStore):
        """node-b finds the series undispatched, then node-a dispatches it before node-b."""

        def undispatched(self) -> list[SeriesRow]:
            rows = super().undispatched()
            node_a.poll()
            return rows

    # Both nodes find it undispatched at their first poll (start-up): one queues its jobs.
    _monitor(Interleaved(second), JobQueue(second), clock, dispatched).poll()
    assert dispatched == ["1.2.3.6"]
    assert len(JobQueue(database).jobs()) == 1


def test_start_up_holds_only_the_series_this_node_was_receiving(
    database: Connection, second: Connection, clock
) -> None:
    a, b = SeriesStore(database), SeriesStore(second)
    _record(a, "1.2.3.7", 0, clock(), "node-a")
    _record(b, "1.2.3.8", 0, clock(), "node-b")
    _record(b, "1.2.3.7", 1, clock(), "node-b")
    held = a.hold_receiving(clock() + 60, "node restarted", received_by="node-a")
    assert held == ["1.2.3.7"]  # node-b's own series keeps completing after its quiet period


def test_start_up_holds_the_series_of_the_node_and_its_receiver_processes(
    database: Connection, second: Connection, clock
) -> None:
    a, b = SeriesStore(database), SeriesStore(second)
    _record(a, "1.2.3.9", 0, clock(), "node-a/rx2")  # received by node-a's receiver process
    _record(a, "1.2.3.10", 0, clock(), "node-a")
    _record(b, "1.2.3.11", 0, clock(), "node-b/rx2")
    names = ["node-a", "node-a/rx2", "node-a/rx3"]
    held = a.hold_receiving(clock() + 60, "node restarted", received_by=names)
    assert sorted(held) == ["1.2.3.10", "1.2.3.9"]


def _spool_one(ingestor: Ingestor, dataset) -> None:
    encoded = _encoded(dataset)
    ingestor.accept(
        IncomingInstance(
            sop_uid=str(dataset.SOPInstanceUID),
            sop_class_uid=str(dataset.SOPClassUID),
            series_uid=str(dataset.SeriesInstanceUID),
            study_uid=str(dataset.StudyInstanceUID),
            transfer_syntax=str(ExplicitVRLittleEndian),
            modality="CT",
        ),
        encoded,
    )


def _encoded(dataset) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_start_up_recovers_and_cleans_only_this_nodes_spool_files(
    database: Connection, second: Connection, clock, tmp_path: Path
) -> None:
    shared = tmp_path / "shared-spool"
    a = Ingestor(Spool(shared, "node-a"), SeriesStore(database), clock=clock, node_name="node-a")
    b = Ingestor(Spool(shared, "node-b"), SeriesStore(second), clock=clock, node_name="node-b")
    datasets, _ = make_chest_ct(n_slices=4, rows=16, columns=16, seed=3)
    _spool_one(a, datasets[0])
    _spool_one(b, datasets[1])
    # node-b wrote a file whose row is not committed yet, and is writing another.
    spool_b = Spool(shared, "node-b")
    unrecorded = spool_b.write(
        datasets[2].StudyInstanceUID,
        datasets[2].SeriesInstanceUID,
        datasets[2].SOPInstanceUID,
        _encoded(datasets[2]),
    )
    writing = unrecorded.with_name(".in-flight.0123.tmp")
    writing.write_bytes(b"partial")
    # node-a restarts: it left a partial file and an unrecorded file of its own.
    spool_a = Spool(shared, "node-a")
    own = spool_a.write(
        datasets[3].StudyInstanceUID,
        datasets[3].SeriesInstanceUID,
        datasets[3].SOPInstanceUID,
        _encoded(datasets[3]),
    )
    own_partial = own.with_name(".crashed.4567.tmp")
    own_partial.write_bytes(b"partial")
    assert a.recover() == 1
    assert not own_partial.exists() and writing.exists() and unrecorded.exists()
    store = SeriesStore(database)
    assert not store.has_instance(str(datasets[2].SOPInstanceUID))  # left to node-b
    receivers = store.instance_receivers(str(datasets[0].SeriesInstanceUID))
    assert receivers[own] == "node-a"
    assert sorted(set(receivers.values())) == ["node-a", "node-b"]
    assert all(path.is_relative_to(shared / receivers[path]) for path in receivers)


def test_a_missing_instance_file_names_the_node_that_received_it(
    database: Connection, second: Connection, clock
) -> None:
    _record(SeriesStore(second), "1.2.3.9", 0, clock(), "node-b")
    store = SeriesStore(database)
    with pytest.raises(InstancesUnreadable, match=r"1 received by node node-b .*/spool/node-b/0"):
        check_instances_visible(store, "1.2.3.9", store.instance_paths("1.2.3.9"))


def test_an_export_is_leased_to_one_exporter_and_taken_over_when_it_expires(
    database: Connection, second: Connection, clock, tmp_path: Path
) -> None:
    a, b = JobQueue(database, lease_seconds=30), JobQueue(second, lease_seconds=30)
    job_id = job_with_results(a, clock, tmp_path)
    owner_a, owner_b = owner_name("exporter", "node-a"), owner_name("exporter", "node-b")
    claimed = a.claim_export(clock(), owner_a)
    assert claimed is not None and claimed.owner == owner_a
    assert claimed.lease_expires_at == clock() + 30
    assert b.claim_export(clock(), owner_b) is None  # held
    clock.advance(25)
    assert a.renew_export_lease(job_id, owner_a, clock())
    clock.advance(25)
    assert b.claim_export(clock(), owner_b) is None  # renewed: still held
    assert b.waiting_destinations(clock()) == set()  # a send in progress, not a backoff
    clock.advance(10)  # node-a died: no renewal
    taken = b.claim_export(clock(), owner_b)
    assert taken is not None and taken.id == job_id and taken.owner == owner_b
    assert taken.export_attempts == 2
    # node-a comes back to record its send: the job is node-b's now, nothing changes.
    assert not a.renew_export_lease(job_id, owner_a, clock())
    a.finish(job_id, clock(), "sent to pacs", owner=owner_a)
    a.export_progress(job_id, ["pacs"], clock(), retry_at=clock() + 5, error="x", owner=owner_a)
    job = a.get(job_id)
    assert job is not None and job.state == "exporting" and job.owner == owner_b
    b.finish(job_id, clock(), "sent to pacs", owner=owner_b)
    job = a.get(job_id)
    assert job is not None and job.state == "done" and job.owner is None
    events = [(e.code, e.detail) for e in a.events(job_id)]
    assert (
        EventCode.JOB_LEASE_EXPIRED.value,
        f"export lease of {owner_a} expired; taken over by {owner_b}",
    ) in events
    lost = [detail for code, detail in events if code == EventCode.JOB_LEASE_LOST.value]
    assert len(lost) == 2 and all(d.startswith(f"{owner_a} lost its lease") for d in lost)
    assert [code for code, _ in events].count(EventCode.JOB_DONE.value) == 1


def test_a_failed_send_releases_the_export_lease_for_the_backoff(
    database: Connection, clock, tmp_path: Path
) -> None:
    queue = JobQueue(database, lease_seconds=30)
    job_id = job_with_results(queue, clock, tmp_path)
    assert queue.claim_export(clock(), "me") is not None
    queue.export_progress(job_id, ["pacs"], clock(), retry_at=clock() + 5, error="down", owner="me")
    job = queue.get(job_id)
    assert job is not None and job.owner is None and job.lease_expires_at is None
    assert queue.waiting_destinations(clock()) == {"pacs"}
    assert queue.claim_export(clock(), "other") is None
    clock.advance(5)
    again = queue.claim_export(clock(), "other")
    assert again is not None and again.owner == "other"
    codes = [e.code for e in queue.events(job_id)]
    assert EventCode.JOB_LEASE_EXPIRED.value not in codes  # a due retry, not a takeover


def test_start_up_leaves_a_live_nodes_export_under_its_lease(
    database: Connection, second: Connection, clock, tmp_path: Path
) -> None:
    a, b = JobQueue(database), JobQueue(second)
    live = job_with_results(a, clock, tmp_path / "1", series_uid="1.2.3.10")
    dead = job_with_results(a, clock, tmp_path / "2", series_uid="1.2.3.11")
    # Another node process on this host (alive: our parent) sends one; a dead one the other.
    live_owner = f"{socket.gethostname()}:{os.getppid()}:exporter@node-a"
    assert a.claim_export(clock(), live_owner) is not None
    assert a.claim_export(clock(), f"{socket.gethostname()}:999999999:exporter@node-c")
    b.requeue_interrupted(clock())
    live_job, dead_job = b.get(live), b.get(dead)
    assert live_job is not None and live_job.owner == live_owner
    assert live_job.lease_expires_at is not None
    assert dead_job is not None and dead_job.owner is None and dead_job.lease_expires_at is None
    assert dead_job.next_attempt_at == clock()
    taken = b.claim_export(clock(), "node-b")
    assert taken is not None and taken.id == dead


def test_node_identity_shared_spool_and_lease_settings(tmp_path: Path) -> None:
    plain = settings_from_mapping(
        {"node": {"dicom_port": 11999, "data_dir": str(tmp_path)}}, environ={}
    )
    assert plain.node.identity == f"{socket.gethostname()}:11999"
    assert plain.spool_dir == tmp_path / "spool" and plain.spool_subdir is None
    assert plain.results_dir == tmp_path / "results"
    shared = settings_from_mapping(
        {
            "node": {
                "data_dir": str(tmp_path),
                "name": "ingest-1:11112",
                "spool_dir": str(tmp_path / "nfs" / "spool"),
                "results_dir": str(tmp_path / "nfs" / "results"),
            },
            "workers": {"lease_seconds": 5},
        },
        environ={},
    )
    assert shared.spool_dir == tmp_path / "nfs" / "spool"
    assert shared.spool_subdir == "ingest-1_11112"
    assert shared.results_dir == tmp_path / "nfs" / "results"
    assert shared.workers.lease_seconds == 5
    with pytest.raises(ConfigError, match=r"node\.name"):
        settings_from_mapping({"node": {"name": "a b/c"}}, environ={})


def test_pull_leases_name_the_node(database: Connection, clock, tmp_path: Path) -> None:
    from node.pull.service import PullService
    from node.state.pulls import PullStore

    series = SeriesStore(database)
    ingestor = Ingestor(Spool(tmp_path / "spool"), series, clock=clock, node_name="node-a")
    puller = PullService(
        PullStore(database), dict, ingestor, series, node_ae_title="AINODE", clock=clock
    )
    assert puller._owner == owner_name("pull", "node-a")
    assert puller._owner.endswith(":pull@node-a")
