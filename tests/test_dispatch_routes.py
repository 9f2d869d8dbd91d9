"""Which rules would route a series (``Dispatcher.routes``, asked by the read-ahead)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from node.config import RuleSettings
from node.orchestration.dispatch import Dispatcher
from node.state.jobs import JobQueue
from node.state.series import SeriesStore
from tests.test_completion_and_jobs import record
from tools.synthetic.chest_ct import make_chest_ct, write_series

CHEST = RuleSettings(name="chest", match={"Modality": "CT"}, plugin="ct_lungs")
HEAD = RuleSettings(name="head", match={"Modality": "MR"}, plugin="mr_brain")


def _store(database, tmp_path: Path, *, readable: bool) -> SeriesStore:
    store = SeriesStore(database)
    datasets, _ = make_chest_ct(n_slices=2, rows=16, columns=16, seed=3)
    paths = write_series(datasets, tmp_path / "s")
    if not readable:
        for path in paths:
            path.write_bytes(b"not DICOM")
    for n, path in enumerate(paths):
        store.record_instance(dataclasses.replace(record(f"1.2.3.9.{n}"), path=path), 0.0)
    return store


def _dispatcher(database, store: SeriesStore, rules: list[RuleSettings]) -> Dispatcher:
    return Dispatcher(store, JobQueue(database), lambda: rules, clock=lambda: 0.0)


def test_routes_matches_the_series_header_against_the_rules(database, tmp_path):
    store = _store(database, tmp_path, readable=True)
    row = store.series("1.2.3.1")
    assert row is not None
    assert [r.name for r in _dispatcher(database, store, [HEAD, CHEST]).routes(row)] == ["chest"]
    assert _dispatcher(database, store, [HEAD]).routes(row) == []


def test_routes_reads_no_header_while_no_rule_is_enabled(database, tmp_path, caplog):
    store = _store(database, tmp_path, readable=False)
    row = store.series("1.2.3.1")
    assert row is not None
    caplog.set_level(logging.WARNING, logger="node.orchestration.dispatch")
    assert _dispatcher(database, store, []).routes(row) == []
    assert "unreadable header" not in caplog.text  # not even tried
    assert _dispatcher(database, store, [CHEST]).routes(row) == []
    assert caplog.text.count("unreadable header skipped") == 2  # with a rule: both tried
