"""Soak: many series through the whole pipeline; memory, file descriptors, lost jobs, temp files.

A real node (chest CT -> ``ct_lungs``, colour fundus photographs -> ``op_fundus_classifier``,
results to a real Orthanc) gets ``--soak-series`` series over storescu, one association each:
every ``--soak-ct-every``-th a 128x128 chest CT of ``--soak-slices`` slices, the others one
256x256 fundus photograph (a 2D routine). The series are generated before the node starts;
the sender keeps at most ``IN_FLIGHT`` series without an ended job, so the node runs at a
steady backlog rather than swallowing everything first.

Every second: the node process's RSS (``/proc/<pid>/status`` VmRSS) and open file
descriptors (``/proc/<pid>/fd``), and jobs ended. Reported after a warm-up (the first 10 %
of jobs): the least-squares slope of RSS in KiB per series and per hour, and of the fds.
Also: jobs expected vs ended done (no job lost), whether the node's temporary folders are
empty at the end (its ``TMPDIR``, set to a folder of its own, and no ``*.tmp``/``*.partial``
file under its data directory), and the error of the job ETA: the ``eta`` of
``GET /api/jobs/{id}`` recorded when the job is first seen queued, against its actual finish.
"""

from __future__ import annotations

import datetime
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks import pipeline
from node.config import BUILT_IN_CHEST_RULE, BUILT_IN_FUNDUS_DEMO_RULE
from tools.node_process import NodeProcess
from tools.orthanc import OrthancServer

#: Series sent whose job has not ended, at most.
IN_FLIGHT = 6
#: Share of the jobs that is warm-up (not in the slopes).
WARM_UP = 0.1


def _proc(pid: int) -> tuple[int, int]:
    """RSS in KiB and open file descriptors of a process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def _seconds(value: Any) -> float | None:
    """An ETA instant as epoch seconds (a number or an ISO 8601 string)."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        return moment.timestamp()
    return None


class Sampler(threading.Thread):
    """Samples the node every second; records each job's first ETA while it is queued."""

    def __init__(self, node: NodeProcess, token: str) -> None:
        super().__init__(daemon=True)
        assert node.pid is not None
        self.pid = node.pid
        self.node = node
        self.token = token
        self.samples: list[dict[str, float]] = []
        self.etas: dict[int, dict[str, Any]] = {}
        self.eta_field_seen = False
        self.stopping = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        started = time.time()
        with pipeline.api(self.node, self.token) as client:
            while not self.stopping.is_set():
                tick = time.monotonic()
                try:
                    rss, fds = _proc(self.pid)
                    jobs = pipeline.jobs(self.node)
                    ended = sum(j["state"] in pipeline.FINAL_STATES for j in jobs)
                    self.samples.append(
                        {"t": time.time() - started, "rss_kib": rss, "fds": fds, "ended": ended}
                    )
                    self._etas(client, jobs)
                except (OSError, httpx.HTTPError) as exc:
                    self.error = f"{type(exc).__name__}: {exc}"
                self.stopping.wait(max(0.0, 1.0 - (time.monotonic() - tick)))

    def _etas(self, client: httpx.Client, jobs: list[dict[str, Any]]) -> None:
        for job in jobs:
            if job["state"] != "queued" or job["id"] in self.etas:
                continue
            answer = client.get(f"/api/jobs/{job['id']}")
            answer.raise_for_status()
            body = answer.json()
            self.eta_field_seen = self.eta_field_seen or "eta" in body
            self.etas[job["id"]] = {"seen_at": time.time(), "eta": body.get("eta")}


def slope(x: list[float], y: list[float]) -> float | None:
    """Least-squares slope of y over x (None with fewer than 3 distinct x)."""
    if len(set(x)) < 3:
        return None
    return float(np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)[0])


def leftovers(data_dir: Path, tmpdir: Path) -> dict[str, Any]:
    """What the node left in its temp folder and temporary files under its data directory."""
    in_tmp = sorted(str(p.relative_to(tmpdir)) for p in tmpdir.rglob("*"))
    partial = sorted(
        {
            str(p.relative_to(data_dir))
            for pattern in ("*.tmp", "*.partial", ".*.tmp")
            for p in data_dir.rglob(pattern)
        }
    )
    return {
        "tmpdir_entries": in_tmp[:20],
        "tmpdir_count": len(in_tmp),
        "data_dir_temp_files": partial[:20],
        "data_dir_temp_count": len(partial),
        "data_dir_entries": sorted(p.name for p in data_dir.iterdir()),
        "empty": not in_tmp and not partial,
    }


def eta_errors(
    etas: dict[int, dict[str, Any]], jobs: list[dict[str, Any]], field_seen: bool
) -> dict[str, Any]:
    if not field_seen:
        return {"available": False, "note": "not available (GET /api/jobs/{id} has no eta)"}
    finished = {j["id"]: j["finished_at"] for j in jobs if j["finished_at"]}
    errors = []
    for job_id, seen in etas.items():
        eta = seen["eta"] or {}
        predicted = _seconds(eta.get("estimated_finish"))
        if predicted is None and isinstance(eta.get("seconds_to_finish"), int | float):
            predicted = seen["seen_at"] + float(eta["seconds_to_finish"])
        if predicted is not None and job_id in finished:
            errors.append(abs(finished[job_id] - predicted))
    if not errors:
        return {"available": True, "jobs": 0, "note": "no queued job had an estimate"}
    errors.sort()
    return {
        "available": True,
        "jobs": len(errors),
        "jobs_seen_queued": len(etas),
        "median_abs_error_s": round(statistics.median(errors), 2),
        "p90_abs_error_s": round(errors[min(len(errors) - 1, int(0.9 * len(errors)))], 2),
        "bases": sorted({str((s["eta"] or {}).get("basis")) for s in etas.values()}),
    }


def run_soak(
    workdir: Path, *, series: int = 200, ct_every: int = 4, slices: int = 24
) -> dict[str, Any]:
    """Send ``series`` series through a node to Orthanc while sampling the node."""
    generated = time.monotonic()
    sent_uids: list[str] = []
    batches: list[list[Path]] = []
    for index in range(series):
        directory = workdir / "series" / f"{index:04d}"
        if ct_every and index % ct_every == 0:
            uid, _, files = pipeline.write_ct(directory, 9000 + index, slices, "Chest soak")
        else:
            uid, files = pipeline.write_fundus(directory, 9000 + index)
        sent_uids.append(uid)
        batches.append(files)
    generate_s = time.monotonic() - generated
    tmpdir = workdir / "node-tmp"
    tmpdir.mkdir(parents=True)
    rules = [BUILT_IN_CHEST_RULE, BUILT_IN_FUNDUS_DEMO_RULE]
    with (
        OrthancServer(workdir=workdir / "orthanc", graceful_stop=False) as pacs,
        NodeProcess(
            pipeline.results_config(pacs, rules),
            workdir=workdir / "node",
            env={"TMPDIR": str(tmpdir)},
        ) as node,
    ):
        sampler = Sampler(node, pipeline.viewer_token(node))
        sampler.start()
        started = time.monotonic()
        for index, files in enumerate(batches):
            while True:
                ended = sum(j["state"] in pipeline.FINAL_STATES for j in pipeline.jobs(node))
                if index - ended < IN_FLIGHT:
                    break
                time.sleep(0.2)
            pipeline.storescu(files, node)
        final = pipeline.wait_for_jobs(node, series, timeout=3600)
        run_s = time.monotonic() - started
        time.sleep(5)  # a few samples at rest
        sampler.stopping.set()
        sampler.join(timeout=30)
        left = leftovers(node.data_dir, tmpdir)

    samples = sampler.samples
    warm = [s for s in samples if s["ended"] >= max(1, int(WARM_UP * series))]
    t = [s["t"] for s in warm]
    per_second = {k: slope(t, [s[k] for s in warm]) for k in ("rss_kib", "fds")}
    ended = [s["ended"] for s in warm]
    per_series = {k: slope(ended, [s[k] for s in warm]) for k in ("rss_kib", "fds")}
    done = {j["series_uid"] for j in final if j["state"] == "done"}
    lost = [uid for uid in sent_uids if uid not in done]
    states = {s: sum(j["state"] == s for j in final) for s in {j["state"] for j in final}}
    unsent = sum(j["pending_destinations"] not in (None, "", "[]") for j in final)
    return {
        "series": series,
        "ct_series": sum(1 for i in range(series) if ct_every and i % ct_every == 0),
        "ct": f"{slices} x 128x128 chest phantom -> ct_lungs",
        "two_d": "one 256x256 colour fundus photograph -> op_fundus_classifier",
        "in_flight": IN_FLIGHT,
        "generate_s": round(generate_s, 1),
        "run_s": round(run_s, 1),
        "series_per_minute": round(series / run_s * 60, 2),
        "jobs_expected": series,
        "jobs": len(final),
        "job_states": states,
        "lost_series": len(lost),
        "jobs_with_unsent_results": unsent,
        "no_job_lost": not lost and not unsent,
        "warm_up_jobs": max(1, int(WARM_UP * series)),
        "rss_kib_start": warm[0]["rss_kib"] if warm else None,
        "rss_kib_end": samples[-1]["rss_kib"] if samples else None,
        "rss_kib_peak": max((s["rss_kib"] for s in samples), default=None),
        "fds_start": warm[0]["fds"] if warm else None,
        "fds_end": samples[-1]["fds"] if samples else None,
        "rss_slope_kib_per_series": _round(per_series["rss_kib"]),
        "rss_slope_kib_per_hour": _round(per_second["rss_kib"], 3600),
        "fds_slope_per_series": _round(per_series["fds"], digits=4),
        "fds_slope_per_hour": _round(per_second["fds"], 3600),
        "temp": left,
        "eta": eta_errors(sampler.etas, final, sampler.eta_field_seen),
        "sampler_error": sampler.error,
        "samples": samples,
    }


def _round(value: float | None, scale: float = 1.0, digits: int = 2) -> float | None:
    return None if value is None else round(value * scale, digits)


def soak_table(result: dict[str, Any]) -> list[str]:
    eta = result["eta"]
    if eta.get("median_abs_error_s") is not None:
        eta_line = (
            f"median {eta['median_abs_error_s']:.1f} s, p90 {eta['p90_abs_error_s']:.1f} s"
            f" ({eta['jobs']} jobs)"
        )
    else:
        eta_line = eta["note"]
    temp = result["temp"]
    return [
        f"Soak: {result['series']} series ({result['ct_series']} CT: {result['ct']};"
        f" the rest {result['two_d']}), results to Orthanc, {result['run_s']:.0f} s"
        f" ({result['series_per_minute']:.1f} series/min)",
        f"  jobs {result['jobs']}/{result['jobs_expected']} {result['job_states']},"
        f" series without a done job {result['lost_series']}, unsent results"
        f" {result['jobs_with_unsent_results']}: no job lost = {result['no_job_lost']}",
        f"  RSS {result['rss_kib_start']} -> {result['rss_kib_end']} KiB"
        f" (peak {result['rss_kib_peak']}); slope after {result['warm_up_jobs']} jobs:"
        f" {result['rss_slope_kib_per_series']} KiB/series,"
        f" {result['rss_slope_kib_per_hour']} KiB/h",
        f"  fds {result['fds_start']} -> {result['fds_end']}; slope"
        f" {result['fds_slope_per_series']} /series, {result['fds_slope_per_hour']} /h",
        f"  temp folders empty at the end: {temp['empty']} (TMPDIR {temp['tmpdir_count']},"
        f" *.tmp/*.partial under data dir {temp['data_dir_temp_count']})",
        f"  ETA error (first estimate while queued vs actual finish): {eta_line}",
    ]


def plot(result: dict[str, Any], path: Path) -> None:
    """RSS and open file descriptors of the node over the soak."""
    import matplotlib.pyplot as plt

    samples = result["samples"]
    t = [s["t"] / 60 for s in samples]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=80)
    ax.plot(t, [s["rss_kib"] / 1024 for s in samples], color="tab:blue", label="RSS")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MiB)", color="tab:blue")
    ax.set_ylim(bottom=0)
    fds = ax.twinx()
    fds.plot(t, [s["fds"] for s in samples], color="tab:orange", label="open fds")
    fds.set_ylabel("open file descriptors", color="tab:orange")
    fds.set_ylim(bottom=0)
    ax.set_title(
        f"Soak, {result['series']} series: RSS {result['rss_slope_kib_per_series']} KiB/series,"
        f" fds {result['fds_slope_per_series']}/series",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
