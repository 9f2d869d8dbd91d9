"""Series per hour on Ray actors with 1, 2 and 4 workers against the local executor, and
the Ray path's per-job overhead.

The same jobs (``ct_lungs`` on small synthetic chest CTs, SEG + SR written) run through
the node's executors, in one run: first the :class:`~node.orchestration.executor.LocalExecutor`
(one CPU thread, the node's default), then a :class:`~node.orchestration.ray_executor.RayExecutor`
on a real local Ray cluster (:class:`~tools.ray_cluster.RayCluster`, one CPU per worker
process) with 1, 2 and 4 workers, one actor each, ``max_in_flight_per_actor`` 2. A warm-up
job per configuration loads the routine first (actors load it once and keep it).

Per-job overhead of the Ray path: for each job, the time from ``submit`` to its output
back on the node (result files written) less the time ``execute`` took in the actor; it
covers reading the files and ``ray.put``, the call reaching the actor, the actor writing the
inputs, the results' bytes coming back and the node writing them. Measured one job at a
time on one actor (nothing queued), with ``to_start`` (submit to the actor starting the
call), ``back`` (the actor returning to the node having the answer) and ``write`` (the
node writing the result files durably) apart.

``python -m benchmarks --only ray`` (``--ray-series``, ``--ray-slices``,
``--ray-workers``). Measures; asserts nothing about speed. On a machine with fewer cores
than workers the workers share them (the JSON records the core count).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

CT_ROWS = 128


def _jobs(workdir: Path, count: int, slices: int, start_id: int) -> list[Any]:
    from node.orchestration.job import JobInput
    from node.results.plan import ResultPlan
    from tools.synthetic.chest_ct import make_chest_ct, write_series

    jobs = []
    for index in range(count):
        datasets, _ = make_chest_ct(
            n_slices=slices, rows=CT_ROWS, columns=CT_ROWS, seed=index, pixel_spacing_mm=2.5
        )
        paths = write_series(datasets, workdir / "series" / str(index))
        job_id = start_id + index
        jobs.append(
            JobInput(
                job_id=job_id,
                rule="chest",
                plugin="ct_lungs",
                plugin_version="",
                device="cpu",
                template="ct_lungs",
                templates_dir=None,
                study_uid=str(datasets[0].StudyInstanceUID),
                series_uid=str(datasets[0].SeriesInstanceUID),
                instance_paths=tuple(paths),
                plan=ResultPlan.for_job([], {}),
                result_dir=workdir / "results" / f"job-{job_id}",
            )
        )
    return jobs


def _renumbered(jobs: Sequence[Any], offset: int, workdir: Path) -> list[Any]:
    """``jobs`` as new jobs ``offset``, ``offset + 1``, ... with their own result dirs."""
    from dataclasses import replace

    return [
        replace(job, job_id=offset + i, result_dir=workdir / "results" / f"job-{offset + i}")
        for i, job in enumerate(jobs)
    ]


def _throughput(executor: Any, jobs: Sequence[Any]) -> dict[str, Any]:
    """Submit every job at once; series per hour from the first submit to the last output."""
    started = time.perf_counter()
    futures: list[Future[Any]] = [executor.submit(job) for job in jobs]
    outputs = [future.result(timeout=1800) for future in futures]
    seconds = time.perf_counter() - started
    failed = [o.reason for o in outputs if o.outcome != "done"]
    return {
        "series": len(jobs),
        "seconds": round(seconds, 3),
        "series_per_hour": round(len(jobs) * 3600 / seconds, 1),
        "failed": failed,
    }


def _overhead(executor: Any, jobs: Sequence[Any], events: list[tuple[int, str]]) -> dict[str, Any]:
    """One job at a time: round trip less the actor's ``execute`` time (ms)."""
    overheads, to_start, back, write = [], [], [], []
    for job in jobs:
        started = time.perf_counter()
        output = executor.submit(job).result(timeout=600)
        round_trip = time.perf_counter() - started
        overheads.append((round_trip - output.elapsed) * 1000)
        detail = next(d for j, d in events if j == job.job_id)
        fields = dict(item.split("=", 1) for item in detail.split() if "=" in item)
        to_start.append(float(fields["to_start"]) * 1000)
        back.append(float(fields["back"]) * 1000)
        write.append(float(fields.get("write", "nan")) * 1000)
    return {
        "jobs": len(jobs),
        "overhead_ms_median": round(statistics.median(overheads), 1),
        "overhead_ms_max": round(max(overheads), 1),
        "to_start_ms_median": round(statistics.median(to_start), 1),
        "back_ms_median": round(statistics.median(back), 1),
        "write_ms_median": round(statistics.median(write), 1),
    }


def run_ray_scaling(
    workdir: Path,
    *,
    series: int = 12,
    slices: int = 24,
    workers: Sequence[int] = (1, 2, 4),
    overhead_jobs: int = 10,
) -> dict[str, Any]:
    import ray
    import torch

    from node.config import ExecutorSettings
    from node.orchestration.executor import LocalExecutor
    from node.orchestration.ray_executor import RayExecutor
    from node.orchestration.registry import PluginRegistry
    from node.state.events import EventCode
    from tools.ray_cluster import RayCluster, ray_environment

    jobs = _jobs(workdir, series + 1, slices, start_id=1)
    warm, measured = jobs[0], jobs[1:]
    result: dict[str, Any] = {
        "series": series,
        "slices": slices,
        "rows": CT_ROWS,
        "cores": os.cpu_count(),
        "runs": [],
    }
    torch.set_num_threads(1)  # one CPU, like one Ray worker here
    registry = PluginRegistry()
    registry.load({})
    local = LocalExecutor(registry, [torch.device("cpu")])
    try:
        local.submit(warm).result()
        run = _throughput(local, measured)
    finally:
        local.shutdown()
        registry.unload_all()
    result["runs"].append({"executor": "local", "workers": 1, **run})

    os.environ.update(ray_environment())
    offset = 1000
    events: list[tuple[int, str]] = []

    def on_event(job_id: int, code: EventCode, detail: str) -> None:
        if code == EventCode.INFERENCE_REMOTE:
            events.append((job_id, detail))

    with RayCluster(workers=min(workers), resources={"ainode_gpu": 1}) as cluster:
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        try:
            for count in sorted(workers):
                while len(cluster.workers) < count:
                    cluster.add_worker()
                executor = RayExecutor(
                    ExecutorSettings(
                        kind="ray", actors_per_routine=count, gpu_resource="ainode_gpu"
                    ),
                    models={},
                    templates_dir=None,
                    resources=lambda name: registry.plugin_info(name).resources,
                    on_event=on_event,
                )
                try:
                    warmups = _renumbered([warm] * count, offset, workdir)  # one per actor
                    for future in [executor.submit(job) for job in warmups]:
                        future.result(timeout=900)
                    deadline = time.monotonic() + 900  # every actor loaded before timing
                    while time.monotonic() < deadline and not all(
                        a["state"] == "ready" for a in executor.actors()
                    ):
                        time.sleep(0.5)
                    offset += 100
                    run = _throughput(executor, _renumbered(measured, offset, workdir))
                    offset += 100
                    result["runs"].append({"executor": "ray", "workers": count, **run})
                    if count == min(workers):
                        overhead_jobs_list = _renumbered(measured[:overhead_jobs], offset, workdir)
                        offset += 100
                        result["overhead"] = _overhead(executor, overhead_jobs_list, events)
                finally:
                    executor.shutdown()
        finally:
            ray.shutdown()
    return result


def ray_table(result: dict[str, Any]) -> list[str]:
    lines = [
        f"{result['series']} series of {result['slices']} x {result['rows']}^2 slices,"
        f" ct_lungs, {result['cores']} cores",
        f"{'executor':<10} {'workers':>7} {'seconds':>9} {'series/h':>9}",
    ]
    for run in result["runs"]:
        lines.append(
            f"{run['executor']:<10} {run['workers']:>7} {run['seconds']:>9.1f}"
            f" {run['series_per_hour']:>9.0f}"
            + (f"  FAILED {run['failed']}" if run["failed"] else "")
        )
    overhead = result.get("overhead")
    if overhead:
        lines.append(
            f"ray per-job overhead: median {overhead['overhead_ms_median']:.0f} ms"
            f" (max {overhead['overhead_ms_max']:.0f};"
            f" to actor {overhead['to_start_ms_median']:.0f},"
            f" back {overhead['back_ms_median']:.0f},"
            f" results written {overhead.get('write_ms_median', float('nan')):.0f})"
            f" over {overhead['jobs']} jobs"
        )
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    labels = [
        f"{r['executor']}\n{r['workers']} worker{'s' if r['workers'] > 1 else ''}" for r in runs
    ]
    values = [r["series_per_hour"] for r in runs]
    figure, axis = plt.subplots(figsize=(6.5, 4))
    colours = ["#888888" if r["executor"] == "local" else "#1f77b4" for r in runs]
    axis.bar(labels, values, color=colours)
    for index, value in enumerate(values):
        axis.text(index, value, f"{value:.0f}", ha="center", va="bottom")
    axis.set_ylabel("series per hour")
    title = f"ct_lungs, {result['slices']} slices, {result['cores']} cores"
    overhead = result.get("overhead")
    if overhead:
        title += f"; Ray overhead {overhead['overhead_ms_median']:.0f} ms/job"
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
