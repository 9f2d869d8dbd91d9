"""Issue 13, outages: a series that never goes quiet completes at a maximum age, and a
series that keeps re-opening completes at most N generations per window (the next one
waits, it is not dropped). Unit tests on an injected clock, then a real node process
with real storescu senders."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from node.orchestration.completion import CompletionMonitor
from node.state.series import SeriesStore
from tests.support.dcmtk import storescu
from tests.support.net import wait_until
from tests.test_completion_and_jobs import record
from tools.node_process import NodeProcess
from tools.synthetic.chest_ct import make_chest_ct, write_series

# Every store test here runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.state_backends


def bounded(store, clock, completed, **limits):
    return CompletionMonitor(
        store, quiet_seconds=10.0, clock=clock, on_complete=completed.append, **limits
    )


def test_a_trickling_series_completes_at_the_maximum_age(database, clock, caplog):
    store, completed = SeriesStore(database), []
    mon = bounded(store, clock, completed, max_receiving_seconds=60.0)
    for i in range(12):  # one instance every 5 s: never quiet for 10 s
        store.record_instance(record(f"1.9.{i}"), clock())
        assert mon.poll() == []
        clock.advance(5)
    store.record_instance(record("1.9.99"), clock())
    (row,) = mon.poll()  # 60 s after the first instance
    assert row.instance_count == 13 and row.generation == 1
    assert "maximum receiving time (60 s)" in (row.completion_note or "")
    assert any("maximum receiving time" in r.getMessage() for r in caplog.records)
    # The next generation counts from its own first instance, not the series' first.
    clock.advance(5)
    store.record_instance(record("1.9.100"), clock())
    clock.advance(5)
    store.record_instance(record("1.9.101"), clock())
    assert mon.poll() == []


def test_generations_beyond_the_bound_wait_for_the_window(database, clock):
    store, completed = SeriesStore(database), []
    mon = bounded(store, clock, completed, max_generations=2, generation_window=3600.0)
    start = clock()
    for i in range(2):
        store.record_instance(record(f"1.9.{i}"), clock())
        clock.advance(11)
        assert [r.generation for r in mon.poll()] == [i + 1]
    store.record_instance(record("1.9.2"), clock())
    clock.advance(11)
    assert mon.poll() == []  # a third generation within the hour waits
    note = store.series("1.2.3.1").completion_note or ""
    assert "2 generations completed in the last 3600 s (at most 2)" in note
    clock.advance(start + 11 + 3600 + 1 - clock())  # the first completion left the window
    (row,) = mon.poll()
    assert row.generation == 3 and row.instance_count == 3
    assert row.completion_note == note


def rows(node: NodeProcess, sql: str, *args: object) -> list[sqlite3.Row]:
    with sqlite3.connect(node.data_dir / "state.sqlite3") as db:
        db.row_factory = sqlite3.Row
        return list(db.execute(sql, args))


def job_events(node: NodeProcess, generation: int) -> dict[str, str]:
    return {
        r["event"]: r["detail"]
        for r in rows(
            node,
            "SELECT event, detail FROM job_events JOIN jobs ON jobs.id = job_id"
            " WHERE jobs.generation = ?",
            generation,
        )
    }


def node_config(**completion: float) -> dict[str, object]:
    return {
        "completion": {"poll_seconds": 0.2, **completion},
        "rules": [{"name": "chest", "match": {"Modality": "CT"}, "plugin": "ct_lungs"}],
    }


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory) -> list[Path]:
    datasets, _ = make_chest_ct(n_slices=12, rows=64, columns=64, seed=13)
    return write_series(datasets, tmp_path_factory.mktemp("trickle"))


@pytest.mark.serial(reason="completion asserted within 4-7 s of a sender pacing 0.8 s")
@pytest.mark.slow
def test_real_node_completes_a_trickling_sender_at_the_maximum_age(tmp_path, ct_files):
    """storescu sends one instance every 0.8 s (quiet period 2 s): without the maximum age
    the series would only complete once the sender stops."""
    config = node_config(series_quiet_seconds=2.0, max_receiving_seconds=4.0)
    with NodeProcess(config, workdir=tmp_path / "node") as node:
        first = time.time()
        for path in ct_files:
            storescu(node.dicom_port, [path], called_ae=node.ae_title)
            time.sleep(0.8)
        sent = time.time()
        (series,) = rows(node, "SELECT * FROM series")
        assert series["generation"] >= 1, "the trickle never completed"
        completion = rows(node, "SELECT * FROM series_completions ORDER BY generation")[0]
        assert completion["completed_at"] < sent - 1, "completed only once the sender stopped"
        assert 4.0 <= completion["completed_at"] - first < 7.0
        events = job_events(node, 1)
        assert "maximum receiving time (4 s)" in events["completion"]
        assert "maximum receiving time" in node.log_text()
        # Everything sent ends up in a generation: nothing lost.
        wait_until(
            lambda: (
                rows(node, "SELECT state, instance_count FROM series")[0]["state"] == "complete"
            ),
            10,
            message="last generation complete",
        )
        assert rows(node, "SELECT instance_count FROM series")[0][0] == len(ct_files)


@pytest.mark.slow
def test_real_node_delays_a_generation_beyond_the_bound(tmp_path, ct_files):
    """One generation per 6 s window: an instance that re-opens the series right after it
    completed makes a second generation only when the window allows, with an event why."""
    config = node_config(
        series_quiet_seconds=1.0, max_generations_per_hour=1, generation_window_seconds=6.0
    )
    with NodeProcess(config, workdir=tmp_path / "node") as node:
        storescu(node.dicom_port, ct_files[:4], called_ae=node.ae_title)
        wait_until(
            lambda: bool(rows(node, "SELECT 1 FROM series_completions")), 15, message="gen 1"
        )
        storescu(node.dicom_port, ct_files[4:6], called_ae=node.ae_title)
        time.sleep(2.5)  # quiet long enough, but the window holds the generation back
        assert len(rows(node, "SELECT 1 FROM series_completions")) == 1
        wait_until(
            lambda: len(rows(node, "SELECT 1 FROM series_completions")) == 2,
            15,
            message="gen 2",
        )
        first, second = rows(node, "SELECT * FROM series_completions ORDER BY generation")
        assert second["completed_at"] - first["completed_at"] >= 6.0
        (series,) = rows(node, "SELECT * FROM series")
        assert series["generation"] == 2 and series["instance_count"] == 6
        assert "completion" not in job_events(node, 1)
        assert (
            "1 generations completed in the last 6 s (at most 1)"
            in job_events(node, 2)["completion"]
        )
        assert "completion delayed by the generation bound" in node.log_text()
