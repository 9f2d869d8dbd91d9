"""How good the queue's ETA is: the estimate a job had when first seen queued, against
when it actually finished.

:class:`EtaTracker` works on what ``GET /api/jobs`` returns (the soak benchmark polls it:
``observe(jobs)`` on each poll, then ``summary(finished)`` with each job's ``job.done``
time from its events). ``python -m benchmarks.eta_accuracy`` measures it on its own: a
node (ct_lungs on the CPU) learns from a few series sent in pairs, then a burst of
series of mixed sizes waits in the queue; the ETAs are computed as the API does (the same
functions, over the node's database read-only, so no login is needed).

Measures; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class FirstEstimate:
    job_id: int
    seen_at: float
    estimated_finish: float
    basis: str


class EtaTracker:
    """The first ``eta`` each job had while ``queued``."""

    def __init__(self) -> None:
        self.first: dict[int, FirstEstimate] = {}

    def observe(self, jobs: Iterable[Mapping[str, Any]], now: float | None = None) -> None:
        """Record, from API job objects, the first estimate of each queued job."""
        now = time.time() if now is None else now
        for job in jobs:
            eta = job.get("eta")
            if job.get("state") != "queued" or not eta or job["id"] in self.first:
                continue
            finish = datetime.fromisoformat(eta["estimated_finish"]).timestamp()
            self.first[job["id"]] = FirstEstimate(job["id"], now, finish, eta["basis"])

    def summary(self, finished: Mapping[int, float]) -> dict[str, Any]:
        """Errors of the first estimates (seconds; positive: the job finished later than
        estimated). ``finished``: each job's actual finish (epoch seconds)."""
        rows = [
            (first, finished[job_id] - first.estimated_finish, finished[job_id] - first.seen_at)
            for job_id, first in sorted(self.first.items())
            if job_id in finished
        ]
        if not rows:
            return {"jobs": 0}
        errors = [error for _, error, _ in rows]
        absolute = sorted(abs(e) for e in errors)
        relative = [abs(error) / max(waited, 1e-6) for _, error, waited in rows]
        return {
            "jobs": len(rows),
            "median_error_s": round(statistics.median(errors), 3),
            "median_abs_error_s": round(statistics.median(absolute), 3),
            "p90_abs_error_s": round(absolute[min(len(absolute) - 1, int(0.9 * len(absolute)))], 3),
            "median_relative_error": round(statistics.median(relative), 3),
            "per_job": [
                {
                    "job_id": first.job_id,
                    "waited_s": round(waited, 2),
                    "error_s": round(error, 2),
                    "basis": first.basis,
                }
                for first, error, waited in rows
            ],
        }


def api_etas(database: Path, workers: list[str]) -> list[dict[str, Any]]:
    """The active jobs as ``GET /api/jobs`` shows them (id, state, eta), from ``database``."""
    from node.api.serialize import eta_json
    from node.orchestration.eta import estimate
    from node.state.db import Database
    from node.state.history import JobHistory

    db = Database(database)
    try:
        history = JobHistory(db)
        active = history.active_jobs()
        etas = estimate(history.run_samples(), active, workers, time.time())
    finally:
        db.close()
    return [{"id": j.job_id, "state": j.state, "eta": eta_json(etas[j.job_id])} for j in active]


def finished_at(database: Path, states: tuple[str, ...] = ("done",)) -> dict[int, float]:
    """When each job in ``states`` finished (epoch seconds)."""
    marks = ", ".join("?" for _ in states)
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        rows = db.execute(
            f"SELECT id, finished_at FROM jobs WHERE state IN ({marks})", states
        ).fetchall()
    return {int(r[0]): float(r[1]) for r in rows}


ENDED = ("done", "failed", "skipped", "cancelled")


def measure(
    learn: list[int], burst: list[int], rows: int, workdir: Path, poll: float = 0.3
) -> dict[str, Any]:
    """Send series of ``learn`` slices two at a time, then ``burst`` all at once; track."""
    from node.config import BUILT_IN_CHEST_RULE
    from tools.net import wait_until
    from tools.node_process import NodeProcess
    from tools.synthetic.chest_ct import make_chest_ct, write_series

    def series(index: int, slices: int) -> list[Path]:
        datasets, _ = make_chest_ct(n_slices=slices, rows=rows, columns=rows, seed=500 + index)
        return write_series(datasets, workdir / "series" / str(index))

    def send(files: list[Path]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["storescu", "-aec", "AINODE", "127.0.0.1", str(node.dicom_port), *map(str, files)],
            env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        )

    learning = [series(i, n) for i, n in enumerate(learn)]
    bursting = [series(len(learn) + i, n) for i, n in enumerate(burst)]
    config = {
        "workers": {"device": "cpu"},
        "completion": {"series_quiet_seconds": 1.0, "poll_seconds": 0.2},
        "rules": [BUILT_IN_CHEST_RULE],
    }
    tracker = EtaTracker()
    with NodeProcess(config, workdir=workdir / "node") as node:
        database = node.data_dir / "state.sqlite3"
        # In pairs: the second of each is read ahead, as in a busy hour, so the history
        # holds both kinds of load.
        for count in range(2, len(learning) + 2, 2):
            for sender in [send(files) for files in learning[count - 2 : count]]:
                sender.wait()
            done = min(count, len(learning))
            wait_until(
                lambda c=done: len(finished_at(database, ENDED)) >= c, 600, message="learning"
            )
        senders = [send(files) for files in bursting]
        total = len(learning) + len(bursting)
        deadline = time.time() + 1800
        while len(finished_at(database, ENDED)) < total and time.time() < deadline:
            tracker.observe(api_etas(database, ["cpu"]))
            time.sleep(poll)
        for sender in senders:
            sender.wait()
        result = tracker.summary(finished_at(database))
    return {"learn_slices": learn, "burst_slices": burst, "rows": rows, **result}


def _slices(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n.strip()]


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The ``eta`` section of ``python -m benchmarks`` (``--eta-learn/-burst/-rows``)."""
    return measure(_slices(args.eta_learn), _slices(args.eta_burst), args.eta_rows, workdir)


def table(result: dict[str, Any]) -> list[str]:
    if not result.get("jobs"):
        return ["Queue ETA: no job was seen queued with an estimate"]
    return [
        f"Queue ETA: {result['jobs']} queued jobs (history {result['learn_slices']} slices,"
        f" burst {result['burst_slices']}, {result['rows']}x{result['rows']})",
        f"  error (actual - estimated finish): median {result['median_error_s']:+.1f} s,"
        f" median |error| {result['median_abs_error_s']:.1f} s,"
        f" p90 |error| {result['p90_abs_error_s']:.1f} s,"
        f" median |error| / wait {result['median_relative_error']:.2f}",
    ]


def plot(result: dict[str, Any], path: Path) -> None:
    """Each tracked job: its wait from first seen queued to done against the ETA's error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs = result.get("per_job", [])
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.axhline(0.0, color="#888", linewidth=1)
    axes.scatter([j["waited_s"] for j in jobs], [j["error_s"] for j in jobs], color="#3f7fd0")
    axes.set_xlabel("seconds from first seen queued to done")
    axes.set_ylabel("actual - estimated finish (s)")
    axes.set_title(f"Queue ETA error, {len(jobs)} jobs (negative: done earlier than announced)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learn", default="20,40,60", help="slices of the series sent first")
    parser.add_argument("--burst", default="24,48,20,40,32,56,28,36", help="slices of the burst")
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-eta-"))
    try:
        result = measure(_slices(args.learn), _slices(args.burst), args.rows, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
