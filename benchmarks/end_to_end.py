"""End to end: Orthanc sends a synthetic chest CT to the node; time until SEG + SR are back.

Per run: the phantom is uploaded to Orthanc over REST (not timed), then
``POST /modalities/ainode/store`` (synchronous: it returns once the node acknowledged
the last instance) sends it to the node, and the clock stops when Orthanc holds both a
SEG and an SR series in the study. That time (``total_s``: last instance acknowledged
→ results in Orthanc) includes the node's completion quiet period (``--quiet-seconds``,
a configured wait) and the routine's own run; what is left is the node's **overhead**::

    overhead = total - quiet period - routine (inference)

split by stage from the job's events, read from the node's state database (the API's
job timeline needs a login): completion beyond the quiet period, queue wait, load,
encode, record, export (results written → the node recorded that the destination
acknowledged every object: Orthanc answers a C-STORE once it has stored the object),
visible (that record → both series found over Orthanc's REST API, polled every 20 ms;
negative when Orthanc showed them before the node recorded the acknowledgement) and the
hand-offs (everything else: prepare, the gaps between stages).
"""

from __future__ import annotations

import re
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from node.config import BUILT_IN_CHEST_RULE
from tools.node_process import NodeProcess
from tools.orthanc import OrthancServer
from tools.orthanc_rest import lookup_study, send_to_modality, upload_many, wait_for_series
from tools.synthetic.chest_ct import make_chest_ct

#: Stages of the overhead, in the order they happen (plotted bottom to top).
STAGES = (
    "completion",
    "queue",
    "load",
    "infer",
    "encode",
    "record",
    "export",
    "visible",
    "handoffs",
)
#: Stages that are not overhead: the quiet period is inside ``completion``.
NOT_OVERHEAD = ("infer",)


def node_config(pacs: OrthancServer, quiet_seconds: float, associations: int = 2) -> dict[str, Any]:
    """The node's configuration: results go back to ``pacs`` (over ``associations``
    associations at once); the chest rule runs ct_lungs."""
    return {
        "completion": {"series_quiet_seconds": quiet_seconds, "poll_seconds": 0.2},
        "destinations": {
            "pacs": {
                "ae_title": pacs.aet,
                "host": pacs.host,
                "port": pacs.dicom_port,
                "associations": associations,
            }
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


def _seconds(detail: str) -> float:
    found = re.search(r"seconds=([0-9.]+)", detail)
    return float(found.group(1)) if found else 0.0


def stage_split(
    events: Sequence[dict[str, Any]], acked_at: float, found_at: float, quiet_seconds: float
) -> dict[str, float]:
    """Per-stage seconds of one job (see the module doc) from its events, between the last
    instance acknowledged (``acked_at``) and the results found in Orthanc (``found_at``).

    ``completion`` is the completion wait beyond the quiet period; ``handoffs`` is the
    rest, so the stages add up to ``total - quiet``.
    """
    first: dict[str, dict[str, Any]] = {}
    last: dict[str, dict[str, Any]] = {}
    for event in events:
        first.setdefault(event["event"], event)
        last[event["event"]] = event
    total = found_at - acked_at
    split = dict.fromkeys(STAGES, 0.0)
    if "queued" in first:
        split["completion"] = first["queued"]["at"] - acked_at - quiet_seconds
    if "queued" in first and "started" in first:
        split["queue"] = first["started"]["at"] - first["queued"]["at"]
    if "volume_loaded" in first:
        split["load"] = _seconds(first["volume_loaded"]["detail"])
    if "inference_done" in first:
        split["infer"] = _seconds(first["inference_done"]["detail"])
    if "encoded" in first:
        split["encode"] = _seconds(first["encoded"]["detail"])
    if "encoded" in first and "results_written" in first:
        split["record"] = first["results_written"]["at"] - first["encoded"]["at"]
    if "results_written" in first and "sent" in last:  # every destination acknowledged
        split["export"] = last["sent"]["at"] - first["results_written"]["at"]
        split["visible"] = found_at - last["sent"]["at"]
    elif "results_written" in first:  # no "sent" event: until Orthanc shows the results
        split["export"] = found_at - first["results_written"]["at"]
    split["handoffs"] = total - quiet_seconds - sum(split.values())
    return {stage: round(value, 3) for stage, value in split.items()}


def run_end_to_end(
    *,
    runs: int = 1,
    slices: Sequence[int] = (300,),
    rows: int = 512,
    quiet_seconds: float = 2.0,
    timeout: float = 900.0,
    workdir: Path | None = None,
    associations: int = 2,
) -> dict[str, Any]:
    """Start Orthanc and the node, then time ``runs`` studies of each size in ``slices``;
    the node sends the results over ``associations`` associations at once."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    measured: list[dict[str, Any]] = []
    with OrthancServer(workdir=workdir / "orthanc", graceful_stop=False) as pacs:
        node_started = time.perf_counter()
        config = node_config(pacs, quiet_seconds, associations)
        with NodeProcess(config, workdir=workdir / "node") as node:
            node_start_s = time.perf_counter() - node_started
            pacs.client.put_modalities_id(
                "ainode", json={"AET": node.ae_title, "Host": node.host, "Port": node.dicom_port}
            )
            database = node.data_dir / "state.sqlite3"
            seed = 1000
            for count in slices:
                for _ in range(runs):
                    measured.append(
                        _one_run(pacs, database, seed, count, rows, quiet_seconds, timeout)
                    )
                    seed += 1
            timeline = job_timeline(database)
            loads = load_comparison(_instance_paths(database, measured[0]["study_uid"]))
    return {
        "slices": list(slices),
        "rows": rows,
        "columns": rows,
        "quiet_seconds": quiet_seconds,
        "associations": associations,
        "node_start_s": round(node_start_s, 2),
        "runs": measured,
        "load_comparison": loads,
        "job_events": timeline,
    }


def _one_run(
    pacs: OrthancServer,
    database: Path,
    seed: int,
    slices: int,
    rows: int,
    quiet_seconds: float,
    timeout: float,
) -> dict[str, Any]:
    started = time.perf_counter()
    datasets, _truth = make_chest_ct(n_slices=slices, rows=rows, columns=rows, seed=seed)
    study_uid = str(datasets[0].StudyInstanceUID)
    generated = time.perf_counter()
    upload_many(pacs.client, datasets)
    del datasets
    uploaded = time.perf_counter()
    study_id = lookup_study(pacs.client, study_uid)
    if study_id is None:
        raise RuntimeError("uploaded study not found in Orthanc")
    answer = send_to_modality(pacs.client, "ainode", [study_id], timeout=timeout)
    acked_at = time.time()  # the node's event clock is the wall clock of this machine
    sent = time.perf_counter()
    if answer.get("FailedInstancesCount"):
        raise RuntimeError(f"Orthanc failed to send some instances: {answer}")
    found = wait_for_series(pacs.client, study_uid, ["SEG", "SR"], timeout=timeout, interval=0.02)
    found_at = time.time()
    results = time.perf_counter()
    events = _events_until_sent(database, study_uid, timeout=10.0)
    stages = stage_split(events, acked_at, found_at, quiet_seconds)
    total = results - sent
    return {
        "study_uid": study_uid,
        "slices": slices,
        "generate_s": round(generated - started, 2),
        "upload_to_orthanc_s": round(uploaded - generated, 2),
        "send_to_node_s": round(sent - uploaded, 2),
        "total_s": round(total, 3),
        "overhead_s": round(total - quiet_seconds - stages["infer"], 3),
        "stages_s": stages,
        "result_series": {m: [s["ID"] for s in v] for m, v in found.items()},
    }


def load_comparison(paths: Sequence[Path], repeat: int = 2) -> dict[str, Any]:
    """The node's read of a series (``load_volume``) against the whole-file read it
    replaced (every file parsed with its pixels, then ``assemble_volume``), alternated in
    this process on the same spooled files: a ratio from one run on a noisy machine."""
    import numpy as np
    import pydicom

    from node.contract.assemble import assemble_volume, load_volume

    whole: list[float] = []
    node: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        reference = assemble_volume(pydicom.dcmread(path) for path in paths)
        whole.append(time.perf_counter() - started)
        started = time.perf_counter()
        loaded = load_volume(paths)
        node.append(time.perf_counter() - started)
        if not np.array_equal(reference.array, loaded.array):
            raise RuntimeError("load_volume and assemble_volume disagree")
    return {
        "files": len(paths),
        "whole_file_read_s": [round(v, 3) for v in whole],
        "load_volume_s": [round(v, 3) for v in node],
        "ratio": round(min(whole) / min(node), 2),
    }


def _events_until_sent(database: Path, study_uid: str, timeout: float) -> list[dict[str, Any]]:
    """The events of ``study_uid``'s job once it has its ``sent`` event (Orthanc may show
    the results before the node has recorded their acknowledgement), or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        job_id = _job_of(database, study_uid)
        events = [e for e in job_timeline(database) if e["job_id"] == job_id]
        if any(e["event"] == "sent" for e in events) or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def _instance_paths(database: Path, study_uid: str) -> list[Path]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT path FROM instances WHERE study_uid = ?", (study_uid,))
        return [Path(row[0]) for row in rows.fetchall()]


def _job_of(database: Path, study_uid: str) -> int | None:
    """The (last) job of ``study_uid`` in the node's database."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        row = db.execute("SELECT max(id) FROM jobs WHERE study_uid = ?", (study_uid,)).fetchone()
    return None if row is None else row[0]


def e2e_table(result: dict[str, Any]) -> list[str]:
    """Printed lines: per run the total, the overhead and its stages."""
    lines = [
        f"End to end: {'/'.join(map(str, result['slices']))}-slice "
        f"{result['rows']}x{result['columns']} chest phantom, Orthanc -> node -> Orthanc, "
        f"quiet period {result['quiet_seconds']} s, results over "
        f"{result.get('associations', 1)} association(s) (node start {result['node_start_s']} s)",
        f"  {'slices':>6} {'total':>7} {'overhead':>8}  "
        + " ".join(f"{s[:8]:>8}" for s in STAGES)
        + "   (seconds)",
    ]
    for run in result["runs"]:
        stages = run["stages_s"]
        lines.append(
            f"  {run['slices']:>6} {run['total_s']:>7.2f} {run['overhead_s']:>8.2f}  "
            + " ".join(f"{stages[s]:>8.3f}" for s in STAGES)
        )
    lines.append(
        "  total = last instance acknowledged -> SEG and SR in Orthanc;"
        " overhead = total - quiet period - infer; completion = beyond the quiet period"
    )
    loads = result.get("load_comparison")
    if loads:
        lines.append(
            f"  load of {loads['files']} files, same run: whole-file read + assemble "
            f"{min(loads['whole_file_read_s']):.2f} s, load_volume "
            f"{min(loads['load_volume_s']):.2f} s ({loads['ratio']:.1f}x)"
        )
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    """One stacked bar per run: the quiet period and each stage, in seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    labels = [f"{run['slices']} slices\nrun {i}" for i, run in enumerate(runs)]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(runs) + 3), 5))
    bottom = [0.0] * len(runs)
    quiet = [float(result["quiet_seconds"])] * len(runs)
    ax.bar(labels, quiet, color="#dddddd", label="quiet period")
    bottom = quiet
    colours = plt.get_cmap("tab10")
    for index, stage in enumerate(STAGES):
        values = [max(0.0, float(run["stages_s"][stage])) for run in runs]
        ax.bar(labels, values, bottom=bottom, color=colours(index), label=stage)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for i, run in enumerate(runs):
        ax.text(i, bottom[i], f"overhead {run['overhead_s']:.2f} s", ha="center", va="bottom")
    ax.set_ylabel("seconds from last instance acknowledged to SEG+SR in Orthanc")
    ax.set_title(
        f"End to end, {result['rows']}x{result['columns']} CT, quiet period "
        f"{result['quiet_seconds']} s"
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
