"""End to end: Orthanc sends a synthetic chest CT to the node; time until SEG + SR are back.

Per run: the phantom is uploaded to Orthanc over REST (not timed in the total), then
``POST /modalities/ainode/store`` (synchronous) sends it to the node, and the clock stops
when Orthanc holds both a SEG and an SR series in the study. The total includes the
node's completion quiet period (``--quiet-seconds``), which is a configured wait.

The node's own split (receive, completion, inference, encoding, export) comes from its
job events, read from its state database when available.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from node.config import BUILT_IN_CHEST_RULE
from tools.node_process import NodeProcess
from tools.orthanc import OrthancServer
from tools.orthanc_rest import lookup_study, send_to_modality, upload_many, wait_for_series
from tools.synthetic.chest_ct import make_chest_ct


def node_config(pacs: OrthancServer, quiet_seconds: float) -> dict[str, Any]:
    """The node's configuration: results go back to ``pacs``; the chest rule runs ct_lungs."""
    return {
        "completion": {"series_quiet_seconds": quiet_seconds, "poll_seconds": 0.2},
        "destinations": {
            "pacs": {"ae_title": pacs.aet, "host": pacs.host, "port": pacs.dicom_port}
        },
        "rules": [{**BUILT_IN_CHEST_RULE, "send_to": ["pacs"]}],
    }


def job_timeline(database: Path) -> list[dict[str, Any]]:
    """Job events from the node's state database (empty when it has none)."""
    if not database.exists():
        return []
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
            rows = db.execute(
                "SELECT job_id, at, event, detail FROM job_events ORDER BY job_id, id"
            ).fetchall()
    except sqlite3.Error:
        return []
    return [{"job_id": r[0], "at": r[1], "event": r[2], "detail": r[3]} for r in rows]


def run_end_to_end(
    *,
    runs: int = 1,
    slices: int = 100,
    rows: int = 256,
    quiet_seconds: float = 2.0,
    timeout: float = 900.0,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Start Orthanc and the node, then time ``runs`` studies through the whole loop."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    measured: list[dict[str, Any]] = []
    with OrthancServer(workdir=workdir / "orthanc", graceful_stop=False) as pacs:
        node_started = time.perf_counter()
        with NodeProcess(node_config(pacs, quiet_seconds), workdir=workdir / "node") as node:
            node_start_s = time.perf_counter() - node_started
            pacs.client.put_modalities_id(
                "ainode", json={"AET": node.ae_title, "Host": node.host, "Port": node.dicom_port}
            )
            for run in range(runs):
                measured.append(_one_run(pacs, run, slices, rows, timeout))
            timeline = job_timeline(node.data_dir / "state.sqlite3")
    return {
        "slices": slices,
        "rows": rows,
        "columns": rows,
        "quiet_seconds": quiet_seconds,
        "node_start_s": round(node_start_s, 2),
        "runs": measured,
        "job_events": timeline,
    }


def _one_run(
    pacs: OrthancServer, run: int, slices: int, rows: int, timeout: float
) -> dict[str, Any]:
    started = time.perf_counter()
    datasets, _truth = make_chest_ct(n_slices=slices, rows=rows, columns=rows, seed=1000 + run)
    study_uid = str(datasets[0].StudyInstanceUID)
    generated = time.perf_counter()
    upload_many(pacs.client, datasets)
    uploaded = time.perf_counter()
    study_id = lookup_study(pacs.client, study_uid)
    if study_id is None:
        raise RuntimeError("uploaded study not found in Orthanc")
    answer = send_to_modality(pacs.client, "ainode", [study_id], timeout=timeout)
    sent = time.perf_counter()
    if answer.get("FailedInstancesCount"):
        raise RuntimeError(f"Orthanc failed to send some instances: {answer}")
    found = wait_for_series(pacs.client, study_uid, ["SEG", "SR"], timeout=timeout)
    results = time.perf_counter()
    return {
        "study_uid": study_uid,
        "generate_s": round(generated - started, 2),
        "upload_to_orthanc_s": round(uploaded - generated, 2),
        "send_to_node_s": round(sent - uploaded, 2),
        "wait_for_results_s": round(results - sent, 2),
        "total_s": round(results - uploaded, 2),
        "result_series": {m: [s["ID"] for s in v] for m, v in found.items()},
    }
