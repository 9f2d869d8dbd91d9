"""The state database's cost per job and per instance: SQLite against PostgreSQL.

Two operations, timed one at a time through the real stores on one thread:

* **ingest record** — :meth:`SeriesStore.record_instance` for each received instance
  (one transaction: the instance row and its series' counters);
* **SELECT 1** — the floor under every statement (on PostgreSQL a round trip);
* **claim + record** — a worker's cycle for one job: :meth:`JobQueue.claim_next` (on
  PostgreSQL ``FOR UPDATE SKIP LOCKED``), a ``results written`` event and
  :meth:`JobQueue.inference_done` (the job has nowhere to send, so it ends ``done``).

Backends: the SQLite file as the node runs it (WAL, ``synchronous=NORMAL``), and a local
PostgreSQL (:mod:`tools.postgres`, its default ``fsync=on``) with ``synchronous_commit``
off — the same promise as SQLite's NORMAL: a crash of the machine may lose the last
commits, never consistency — and on (every commit waits for its WAL flush).

Measures; asserts nothing about speed. ``python -m benchmarks --only state``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from node.state.connection import Connection
from node.state.db import Database
from node.state.events import EventCode
from node.state.jobs import JobQueue
from node.state.series import InstanceRecord, SeriesStore

#: Jobs per claim + record run and instances per ingest run.
JOBS = 300
INSTANCES = 600
T0 = 1_700_000_000.0


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median_ms": statistics.median(ordered) * 1000,
        "p90_ms": ordered[int(0.9 * (len(ordered) - 1))] * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
    }


def round_trip(db: Connection, count: int = 300) -> list[float]:
    """Seconds per ``SELECT 1`` (the floor under every statement: a round trip on PostgreSQL)."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        db.query("SELECT 1")
        samples.append(time.perf_counter() - started)
    return samples


def ingest_record(db: Connection, workdir: Path, count: int) -> list[float]:
    """Seconds per :meth:`SeriesStore.record_instance`, ``count`` instances in 10 series."""
    store = SeriesStore(db)
    samples = []
    for i in range(count):
        series = f"1.2.3.{i % 10}"
        record = InstanceRecord(
            sop_uid=f"{series}.{i}",
            series_uid=series,
            study_uid="1.2.3",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax="1.2.840.10008.1.2.1",
            path=workdir / f"{i}.dcm",
            size=525_000,
            modality="CT",
            calling_ae="BENCH",
        )
        started = time.perf_counter()
        store.record_instance(record, T0 + i * 0.01)
        samples.append(time.perf_counter() - started)
    return samples


def claim_and_record(db: Connection, workdir: Path, count: int) -> list[float]:
    """Seconds per claim + results event + :meth:`JobQueue.inference_done`."""
    queue = JobQueue(db)
    for i in range(count):
        queue.enqueue(
            series_uid=f"1.2.4.{i}",
            study_uid="1.2.4",
            generation=1,
            rule="bench",
            plugin="ct_lungs",
            destinations=[],
            priority=5,
            now=T0,
        )
    samples = []
    for i in range(count):
        now = T0 + 1 + i
        started = time.perf_counter()
        job = queue.claim_next(now, "bench:1:cpu")
        assert job is not None
        queue.add_event(job.id, now, EventCode.RESULTS_WRITTEN, "seconds=1.0")
        queue.inference_done(job.id, workdir / str(job.id), now, owner="bench:1:cpu")
        samples.append(time.perf_counter() - started)
    return samples


@contextmanager
def _backends(workdir: Path) -> Iterator[list[tuple[str, Callable[[], Connection]]]]:
    """(name, open a fresh database) for each backend; PostgreSQL stops at the end."""
    from node.state.postgres import PostgresDatabase
    from tools.postgres import PostgresServer

    counter = iter(range(1000))

    def sqlite() -> Connection:
        return Database(workdir / f"bench-{next(counter)}.sqlite3")

    with PostgresServer(durable=True) as server:

        def postgres(synchronous: bool) -> Callable[[], Connection]:
            def open_one() -> Connection:
                name = server.create_database()
                with server.admin() as admin:
                    setting = "on" if synchronous else "off"
                    admin.execute(f"ALTER DATABASE {name} SET synchronous_commit = {setting}")
                return PostgresDatabase(server.url(name))

            return open_one

        yield [
            ("sqlite (WAL, synchronous=NORMAL)", sqlite),
            ("postgresql (synchronous_commit=off)", postgres(False)),
            ("postgresql (synchronous_commit=on)", postgres(True)),
        ]


def run_state(workdir: Path, jobs: int = JOBS, instances: int = INSTANCES) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"jobs": jobs, "instances": instances, "backends": {}}
    with _backends(workdir) as backends:
        for name, open_database in backends:
            db = open_database()
            try:
                trip = round_trip(db)
                ingest = ingest_record(db, workdir, instances)
                cycle = claim_and_record(db, workdir, jobs)
            finally:
                db.close()
            results["backends"][name] = {
                "select_1": _stats(trip),
                "ingest_record": _stats(ingest),
                "claim_record": _stats(cycle),
            }
    return results


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    return run_state(workdir)


def table(result: dict[str, Any]) -> list[str]:
    lines = [
        f"state database: ingest record ({result['instances']} instances) and claim + record"
        f" ({result['jobs']} jobs), one thread, ms",
        f"{'backend':38} {'SELECT 1':>8} {'ingest med':>10} {'p90':>7}"
        f" {'claim+rec med':>13} {'p90':>7}",
    ]
    for name, numbers in result["backends"].items():
        ingest, cycle = numbers["ingest_record"], numbers["claim_record"]
        trip = numbers.get("select_1", {}).get("median_ms", float("nan"))
        lines.append(
            f"{name:38} {trip:8.2f} {ingest['median_ms']:10.2f} {ingest['p90_ms']:7.2f}"
            f" {cycle['median_ms']:13.2f} {cycle['p90_ms']:7.2f}"
        )
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["backends"])
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, title in (
        (axes[0], "ingest_record", "ingest record per instance"),
        (axes[1], "claim_record", "claim + record per job"),
    ):
        medians = [result["backends"][n][key]["median_ms"] for n in names]
        p90 = [result["backends"][n][key]["p90_ms"] for n in names]
        positions = range(len(names))
        axis.bar(positions, medians, label="median")
        axis.scatter(positions, p90, color="black", marker="_", s=200, label="p90")
        axis.set_xticks(list(positions), [n.replace(" (", "\n(") for n in names], fontsize=7)
        axis.set_ylabel("ms")
        axis.set_title(title)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as workdir:
        print("\n".join(table(run_state(Path(workdir)))))


if __name__ == "__main__":
    main()
