"""Urgent under backlog: an urgent series behind 20 queued routine series, against an idle node.

One node (default workers) and a real Orthanc as results destination. Two rules run
``ct_lungs`` on 128x128 chest phantoms (urgent: ``--urgent-slices`` slices; routine: 20, the
least ct_lungs takes, so the backlog builds faster than it drains): ``routine`` (priority 5,
the default) for series described "routine", ``urgent`` (priority 0, the most urgent;
the queue claims by ``priority, id``) for series described "urgent".

1. **idle**: one urgent series on the idle node (after one untimed routine series, so it is
   not the node's first job);
2. **backlog**: ``--urgent-backlog`` routine series are sent (generated first, then over one
   association) and their jobs created, then one urgent series.

Each time: from storescu's exit (last instance acknowledged) until Orthanc holds a SEG and
an SR of the series' study. From the node's job table: whether the urgent job started
before every routine job that was still queued when it was created (it took the next free
worker), and how many routine jobs started in between (0 expected).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks import pipeline
from tools.node_process import NodeProcess
from tools.orthanc import OrthancServer
from tools.orthanc_rest import wait_for_series

#: Slices of each routine series: ct_lungs' minimum, so the node receives a series faster than
#: it runs its job (a job has a fixed cost: encoding, export) and the backlog builds.
ROUTINE_SLICES = 20

RULES = [
    {
        "name": "routine",
        "match": {"Modality": "CT", "SeriesDescription": {"regex": "routine|warm-up"}},
        "plugin": "ct_lungs",
        "priority": 5,
    },
    {
        "name": "urgent",
        "match": {"Modality": "CT", "SeriesDescription": {"regex": "urgent"}},
        "plugin": "ct_lungs",
        "priority": 0,
    },
]


def _urgent_run(
    pacs: OrthancServer, node: NodeProcess, series: tuple[str, str, list[Path]]
) -> dict[str, Any]:
    series_uid, study_uid, files = series
    acknowledged = pipeline.storescu(files, node)
    wait_for_series(pacs.client, study_uid, ["SEG", "SR"], timeout=900, interval=0.1)
    in_orthanc = time.time()
    job = next(j for j in pipeline.jobs(node) if j["series_uid"] == series_uid)
    return {
        "series_uid": series_uid,
        "job_id": job["id"],
        "last_instance_to_results_s": round(in_orthanc - acknowledged, 2),
        "last_instance_to_job_created_s": round(job["created_at"] - acknowledged, 2),
        "job_created_to_started_s": round(job["started_at"] - job["created_at"], 2),
        "job_run_s": round(job["finished_at"] - job["started_at"], 2)
        if job["finished_at"]
        else None,
    }


def run_urgent(workdir: Path, *, backlog: int = 20, slices: int = 40) -> dict[str, Any]:
    """Time an urgent series on an idle node and behind ``backlog`` queued routine series."""
    with (
        OrthancServer(workdir=workdir / "orthanc", graceful_stop=False) as pacs,
        NodeProcess(pipeline.results_config(pacs, RULES), workdir=workdir / "node") as node,
    ):
        # One routine series first (not timed), so the idle run is not the node's first job.
        _, _, warm_up = pipeline.write_ct(workdir / "warm-up", 7099, ROUTINE_SLICES, "warm-up")
        pipeline.storescu(warm_up, node)
        pipeline.wait_for_jobs(node, 1, timeout=600)
        idle = _urgent_run(
            pacs, node, pipeline.write_ct(workdir / "idle", 7000, slices, "Chest urgent")
        )
        urgent = pipeline.write_ct(workdir / "urgent", 7001, slices, "Chest urgent")

        # Generated first, then sent over one association, so the backlog builds faster
        # than the single worker drains it.
        routine_uids, routine_files = [], []
        for index in range(backlog):
            uid, _, files = pipeline.write_ct(
                workdir / f"routine-{index}", 7100 + index, ROUTINE_SLICES, "Chest routine"
            )
            routine_uids.append(uid)
            routine_files += files
        sent_started = time.time()
        pipeline.storescu(routine_files, node)
        send_s = time.time() - sent_started
        deadline = time.monotonic() + 120
        while sum(j["series_uid"] in routine_uids for j in pipeline.jobs(node)) < backlog:
            if time.monotonic() > deadline:
                raise TimeoutError("the routine series never all got a job")
            time.sleep(0.2)
        queued_before = sum(
            j["state"] == "queued" and j["series_uid"] in routine_uids for j in pipeline.jobs(node)
        )
        under_backlog = _urgent_run(pacs, node, urgent)
        final = pipeline.wait_for_jobs(node, backlog + 3, timeout=1800)

    for run in (idle, under_backlog):  # export may still have been finishing when timed
        job = next(j for j in final if j["id"] == run["job_id"])
        run["job_run_s"] = round(job["finished_at"] - job["started_at"], 2)
    urgent_job = next(j for j in final if j["id"] == under_backlog["job_id"])
    routine = [j for j in final if j["series_uid"] in routine_uids]
    # Routine jobs still waiting when the urgent job was created: none may start before it.
    waiting = [
        j for j in routine if j["started_at"] is None or j["started_at"] > urgent_job["created_at"]
    ]
    overtaken = [j for j in waiting if j["started_at"] < urgent_job["started_at"]]
    return {
        "slices": slices,
        "routine_slices": ROUTINE_SLICES,
        "image": "128x128",
        "backlog": backlog,
        "backlog_send_s": round(send_s, 2),
        "routine_queued_when_urgent_sent": queued_before,
        "idle": idle,
        "under_backlog": under_backlog,
        "routine_waiting_when_urgent_created": len(waiting),
        "routine_started_before_urgent": len(overtaken),
        "started_on_next_free_worker": not overtaken,
        "routine_job_run_median_s": round(
            statistics.median(j["finished_at"] - j["started_at"] for j in routine), 2
        ),
        "ratio_backlog_over_idle": round(
            under_backlog["last_instance_to_results_s"] / idle["last_instance_to_results_s"], 2
        ),
        "job_states": sorted({j["state"] for j in final}),
    }


def urgent_table(result: dict[str, Any]) -> list[str]:
    lines = [
        f"Urgent under backlog: {result['slices']}-slice {result['image']} chest CT, ct_lungs,"
        f" results to Orthanc; backlog {result['backlog']} routine series"
        f" of {result.get('routine_slices', result['slices'])} slices"
        f" ({result['routine_queued_when_urgent_sent']} still queued when the urgent was sent)",
        f"  {'node':<14} {'last instance -> SEG+SR in Orthanc s':>37} {'queue wait s':>13}",
    ]
    for key in ("idle", "under_backlog"):
        run = result[key]
        lines.append(
            f"  {key:<14} {run['last_instance_to_results_s']:>37.2f}"
            f" {run['job_created_to_started_s']:>13.2f}"
        )
    lines.append(
        f"  backlog / idle: {result['ratio_backlog_over_idle']:.2f};"
        f" routine job median {result['routine_job_run_median_s']:.2f} s;"
        f" started on the next free worker: {result['started_on_next_free_worker']}"
        f" ({result['routine_started_before_urgent']} of"
        f" {result['routine_waiting_when_urgent_created']} waiting routine jobs started first)"
    )
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    """Bars: last instance -> results in Orthanc, idle node vs behind the backlog."""
    import matplotlib.pyplot as plt

    labels = ["idle node", f"behind {result['backlog']} routine"]
    runs = [result["idle"], result["under_backlog"]]
    waits = [r["last_instance_to_job_created_s"] + r["job_created_to_started_s"] for r in runs]
    totals = [run["last_instance_to_results_s"] for run in runs]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=80)
    ax.bar(labels, totals, color="tab:blue", label="last instance -> SEG+SR in Orthanc")
    ax.bar(labels, waits, color="tab:orange", label="of which until the job started")
    for index, total in enumerate(totals):
        ax.text(index, total, f"{total:.1f} s", ha="center", va="bottom")
    ax.set_ylim(0, max(totals) * 1.25)
    ax.set_ylabel("seconds")
    ax.set_title(f"Urgent series ({result['slices']} slices, ct_lungs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
