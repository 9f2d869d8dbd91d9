"""Issue 13, back-pressure: 8 concurrent storescu associations sending different studies,
plus a ninth re-sending one of them at the same time, into a real node. Nothing lost,
nothing duplicated, every series completes once (one job per series and generation)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.support.net import wait_until
from tools.net import LOCALHOST
from tools.node_process import NodeProcess
from tools.synthetic.chest_ct import make_chest_ct, write_series

STUDIES = 8


def state(node: NodeProcess, sql: str) -> list[sqlite3.Row]:
    with sqlite3.connect(node.data_dir / "state.sqlite3") as db:
        db.row_factory = sqlite3.Row
        return list(db.execute(sql))


@pytest.mark.slow
def test_eight_concurrent_senders_and_a_resend_lose_and_duplicate_nothing(
    tmp_path: Path,
) -> None:
    series: dict[str, list[Path]] = {}
    for index in range(STUDIES):
        datasets, _ = make_chest_ct(n_slices=40, rows=256, columns=256, seed=100 + index)
        series[str(datasets[0].SeriesInstanceUID)] = write_series(
            datasets, tmp_path / f"study{index}"
        )
    assert len(series) == STUDIES
    senders = [*series.values(), next(iter(series.values()))]  # the ninth re-sends study 0
    config = {
        "completion": {"series_quiet_seconds": 2.0, "poll_seconds": 0.2},
        "rules": [{"name": "chest", "match": {"Modality": "CT"}, "plugin": "ct_lungs"}],
    }
    with NodeProcess(config, workdir=tmp_path / "node") as node:
        processes = [
            subprocess.Popen(
                [
                    *("storescu", "-aet", f"CT{n}", "-aec", node.ae_title, LOCALHOST),
                    *(str(node.dicom_port), *map(str, files)),
                ],
                env={**os.environ, "TCP_NODELAY": "1"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for n, files in enumerate(senders)
        ]
        for process in processes:
            _, stderr = process.communicate(timeout=120)
            assert process.returncode == 0, stderr.decode()
        assert node.healthz()  # still answering
        wait_until(
            lambda: len(state(node, "SELECT 1 FROM series WHERE state = 'complete'")) == STUDIES,
            60,
            message="every series complete",
        )
        wait_until(
            lambda: len(state(node, "SELECT 1 FROM jobs")) >= STUDIES, 30, message="jobs queued"
        )
        rows = {r["series_uid"]: r for r in state(node, "SELECT * FROM series")}
        instances = state(node, "SELECT series_uid, COUNT(*) AS n FROM instances GROUP BY 1")
        jobs = state(node, "SELECT series_uid, generation, COUNT(*) AS n FROM jobs GROUP BY 1, 2")
        log = node.log_text()
        audit = state(node, "SELECT * FROM dicom_audit ORDER BY id")
    assert set(rows) == set(series)
    for uid, files in series.items():
        assert rows[uid]["instance_count"] == len(files), uid  # nothing lost, none twice
        assert rows[uid]["generation"] == 1, uid  # completed once, the re-send re-opened nothing
    assert {r["series_uid"]: r["n"] for r in instances} == {u: len(f) for u, f in series.items()}
    assert {(r["series_uid"], r["generation"]): r["n"] for r in jobs} == {
        (uid, 1): 1 for uid in series
    }
    assert log.count("association accepted") >= len(senders)
    # How many associations were open at once (the audit trail: accepted .. released).
    opened = {e["actor"]: e["at"] for e in audit if e["event_type"] == "association_accepted"}
    closed = {e["actor"]: e["at"] for e in audit if e["event_type"] == "instances_received"}
    assert set(opened) == set(closed) == {f"CT{n}" for n in range(len(senders))}
    held = max(sum(opened[a] <= opened[b] < closed[a] for a in opened) for b in opened)
    assert held >= STUDIES, held
    stored = sum(len(f) for f in series.values())
    print(
        f"associations: {len(senders)}, at most {held} open at once;"
        f" instances sent {stored + len(senders[-1])},"
        f" stored {stored}; series complete {len(rows)}; jobs {sum(r['n'] for r in jobs)}"
    )
