"""What the soak and urgent benchmarks share: series on disk, storescu, the node's jobs.

Series are written as files and sent with dcmtk ``storescu`` (``TCP_NODELAY=1``), one
association per series; the node's jobs are read from its state database (read-only) and
over its API with a viewer token made in that database.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tools.net import LOCALHOST
from tools.node_process import NodeProcess
from tools.orthanc import OrthancServer
from tools.synthetic.chest_ct import make_chest_ct, write_series
from tools.synthetic.fundus import make_fundus

#: Job states after which nothing more happens to a job.
FINAL_STATES = ("done", "failed", "skipped", "cancelled")


def write_ct(
    directory: Path, seed: int, slices: int, description: str
) -> tuple[str, str, list[Path]]:
    """A small chest CT phantom (128x128) as files; returns its series and study UIDs and
    the files."""
    datasets, _ = make_chest_ct(
        n_slices=slices, rows=128, columns=128, seed=seed, series_description=description
    )
    first = datasets[0]
    files = write_series(datasets, directory)
    return str(first.SeriesInstanceUID), str(first.StudyInstanceUID), files


def write_fundus(directory: Path, seed: int, size: int = 256) -> tuple[str, list[Path]]:
    """One synthetic colour fundus photograph (OP, a 2D routine) as a file."""
    dataset, _ = make_fundus(seed, size)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "fundus.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return str(dataset.SeriesInstanceUID), [path]


def storescu(files: list[Path], node: NodeProcess) -> float:
    """Send ``files`` over one association; return ``time.time()`` when storescu exited
    (every instance acknowledged)."""
    command = ["storescu", "-aec", node.ae_title, LOCALHOST, str(node.dicom_port)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    result = subprocess.run(
        [*command, *map(str, files)], env=env, capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        raise RuntimeError(f"storescu exited {result.returncode}: {result.stderr[-2000:]}")
    return time.time()


def results_config(pacs: OrthancServer, rules: list[dict[str, Any]]) -> dict[str, Any]:
    """Node configuration: ``rules`` send to ``pacs``; a 1 s completion quiet period."""
    return {
        "completion": {"series_quiet_seconds": 1.0, "poll_seconds": 0.2},
        "destinations": {
            "pacs": {"ae_title": pacs.aet, "host": pacs.host, "port": pacs.dicom_port}
        },
        "rules": [{**rule, "send_to": ["pacs"]} for rule in rules],
    }


def jobs(node: NodeProcess) -> list[dict[str, Any]]:
    """Every job of the node (read-only from its state database), oldest first."""
    database = node.data_dir / "state.sqlite3"
    if not database.exists():
        return []
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT id, series_uid, plugin, priority, state, pending_destinations,"
            " created_at, started_at, finished_at FROM jobs ORDER BY id"
        ).fetchall()
    return [dict(row) for row in rows]


def viewer_token(node: NodeProcess) -> str:
    """A viewer user and API token made in the running node's database."""
    from node.state.db import Database
    from node.state.users import UserStore

    db = Database(node.data_dir / "state.sqlite3")
    try:
        users = UserStore(db)
        users.add("bench", "bench-password-123", "viewer", time.time())
        token, _ = users.create_token("bench", "benchmarks", time.time())
    finally:
        db.close()
    return token


def api(node: NodeProcess, token: str) -> httpx.Client:
    """An HTTP client for the node's API, authorised with ``token``."""
    return httpx.Client(base_url=node.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def wait_for_jobs(node: NodeProcess, count: int, timeout: float) -> list[dict[str, Any]]:
    """Wait until the node has at least ``count`` jobs and every job is in a final state."""
    deadline = time.monotonic() + timeout
    while True:
        found = jobs(node)
        ended = [j for j in found if j["state"] in FINAL_STATES]
        if len(found) >= count and len(ended) == len(found):
            return found
        if time.monotonic() > deadline:
            states = {s: sum(j["state"] == s for j in found) for s in {j["state"] for j in found}}
            raise TimeoutError(f"{len(ended)}/{count} jobs ended after {timeout:.0f} s: {states}")
        time.sleep(0.5)
