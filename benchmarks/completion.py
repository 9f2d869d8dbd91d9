"""Series completion latency, with and without the sender count check.

Orthanc pushes a synthetic CT series to the node (C-STORE, synchronous REST call).
Measured per run: from the end of the send until the node reports the series
complete (``GET /api/studies/{uid}/status``, polled every 20 ms), and from the node's
state database the time from the last instance to the series' completion and to its
job's start (``ct_lungs``, the lightest routine).

- **quiet period**: the node waits ``--quiet-seconds`` without a new instance;
- **count check**: Orthanc is a declared source (DICOMweb, ``ae_title`` = its AET) so the
  node asks it (QIDO-RS) for NumberOfSeriesRelatedInstances and completes the series as
  soon as it holds that many (at the next completion poll, ``poll_seconds``).

One rule routes the series to ``ct_lungs`` so the latency to the job's start is seen; the
job has no destination (its results stay on the node).
"""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tools.net import free_port
from tools.node_process import NodeProcess
from tools.orthanc import OrthancServer
from tools.orthanc_rest import send_to_modality, upload_many
from tools.synthetic.chest_ct import make_chest_ct

TOKEN = "benchmark-token-0123456789"


def _latencies(database: Path, series_uid: str, timeout: float = 120.0) -> tuple[float, float]:
    """Seconds from the series' last instance to its completion and to its job's start."""
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
            row = db.execute(
                "SELECT s.completed_at - s.last_received, j.started_at - s.last_received"
                " FROM series s JOIN jobs j ON j.series_uid = s.series_uid"
                " WHERE s.series_uid = ? AND j.started_at IS NOT NULL",
                (series_uid,),
            ).fetchone()
        if row is not None:
            return float(row[0]), float(row[1])
        if time.monotonic() > deadline:
            raise TimeoutError(f"no job started for series {series_uid}")
        time.sleep(0.05)


def run_completion(
    *,
    runs: int = 2,
    slices: int = 60,
    rows: int = 128,
    quiet_seconds: float = 10.0,
    poll_seconds: float = 1.0,
    workdir: Path | None = None,
) -> dict[str, Any]:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="ainode-completion-"))
    result: dict[str, Any] = {
        "slices": slices,
        "image": f"{rows}x{rows}",
        "quiet_seconds": quiet_seconds,
        "poll_seconds": poll_seconds,
    }
    node_port = free_port()
    with OrthancServer(
        modalities={"ainode": ["AINODE", "127.0.0.1", node_port]}, workdir=workdir / "pacs"
    ) as pacs:
        for mode, count_check in (("quiet_period", False), ("count_check", True)):
            config = {
                "node": {"dicom_port": node_port},
                "completion": {"series_quiet_seconds": quiet_seconds, "poll_seconds": poll_seconds},
                "dicomweb": {"tokens": [{"name": "bench", "token": TOKEN}]},
                "rules": [{"name": "bench", "match": {"Modality": "CT"}, "plugin": "ct_lungs"}],
                "sources": {
                    "pacs": {
                        "kind": "dicomweb",
                        "url": f"{pacs.url}/dicom-web",
                        "ae_title": pacs.aet,
                        "count_check": count_check,
                    }
                },
            }
            samples: list[dict[str, float]] = []
            with NodeProcess(config, workdir=workdir / mode) as node:
                for run in range(runs):
                    seed = 500 + run + (100 if count_check else 0)
                    datasets, _ = make_chest_ct(n_slices=slices, rows=rows, columns=rows, seed=seed)
                    ids = upload_many(pacs.client, datasets)
                    study_uid = str(datasets[0].StudyInstanceUID)
                    series_uid = str(datasets[0].SeriesInstanceUID)
                    started = time.monotonic()
                    send_to_modality(pacs.client, "ainode", ids)
                    sent = time.monotonic()
                    with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
                        while True:
                            status = http.get(f"{node.url}/api/studies/{study_uid}/status").json()
                            if status["series"] and status["series"][0]["state"] == "complete":
                                break
                            if time.monotonic() - sent > quiet_seconds * 3 + 60:
                                raise TimeoutError(f"{mode}: series never completed")
                            time.sleep(0.02)
                    done = time.monotonic()
                    completed, job_started = _latencies(node.data_dir / "state.sqlite3", series_uid)
                    samples.append(
                        {
                            "send_s": sent - started,
                            "after_send_s": done - sent,
                            "node_completed_after_last_instance_s": completed,
                            "job_started_after_last_instance_s": job_started,
                        }
                    )
            result[mode] = {
                "runs": samples,
                "median_after_send_s": statistics.median(s["after_send_s"] for s in samples),
                "median_job_started_s": statistics.median(
                    s["job_started_after_last_instance_s"] for s in samples
                ),
            }
    result["gain_s"] = (
        result["quiet_period"]["median_after_send_s"] - result["count_check"]["median_after_send_s"]
    )
    return result


def completion_table(result: dict[str, Any]) -> list[str]:
    lines = [
        f"Completion: {result['slices']} slices {result['image']} pushed by Orthanc,"
        f" quiet period {result['quiet_seconds']:g} s,"
        f" completion poll {result['poll_seconds']:g} s",
        f"  {'mode':<14} {'send s':>8} {'after send s':>13}"
        f" {'last instance -> complete s':>28} {'-> job started s':>17}",
    ]
    for mode in ("quiet_period", "count_check"):
        for run in result[mode]["runs"]:
            lines.append(
                f"  {mode:<14} {run['send_s']:>8.2f} {run['after_send_s']:>13.2f}"
                f" {run['node_completed_after_last_instance_s']:>28.2f}"
                f" {run['job_started_after_last_instance_s']:>17.2f}"
            )
    lines.append(f"  gain (median after send): {result['gain_s']:.2f} s")
    job_gain = (
        result["quiet_period"]["median_job_started_s"]
        - result["count_check"]["median_job_started_s"]
    )
    lines.append(f"  gain (median last instance -> job started): {job_gain:.2f} s")
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    """Per mode, seconds from the last instance to completion and to the job's start."""
    import matplotlib.pyplot as plt

    modes = ("quiet_period", "count_check")
    keys = (
        ("node_completed_after_last_instance_s", "last instance -> complete"),
        ("job_started_after_last_instance_s", "last instance -> job started"),
    )
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=80)
    width = 0.38
    for offset, (key, label) in enumerate(keys):
        medians = [statistics.median(run[key] for run in result[mode]["runs"]) for mode in modes]
        xs = [i + (offset - 0.5) * width for i in range(len(modes))]
        ax.bar(xs, medians, width, label=label)
        for mode_index, mode in enumerate(modes):
            ax.plot(
                [xs[mode_index]] * len(result[mode]["runs"]),
                [run[key] for run in result[mode]["runs"]],
                "k.",
            )
    ax.set_xticks(range(len(modes)), ["quiet period", "count check"])
    ax.set_ylabel("seconds (median; dots: runs)")
    ax.set_title(f"Completion, {result['slices']} slices, quiet {result['quiet_seconds']:g} s")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
