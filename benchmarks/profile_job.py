"""Profile one ``ct_lungs`` job in process: where load, inference and encode spend their time.

A synthetic chest CT (``--slices`` x 512 x 512) is written once under ``--work``; the job
runs twice through :func:`node.orchestration.execute.execute` (the worker's call, no
database, no network), and the second run is cProfiled, after the heap is settled as
``ainode serve`` settles it (:mod:`node.heap`). Prints each run's stage seconds
and the profile's top functions by cumulative time; the profile is kept for ``pstats``
or snakeviz. Measures; asserts nothing.

Usage: ``python -m benchmarks.profile_job --slices 300``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import tempfile
import time
from pathlib import Path

import pydicom

from node.contract.kinds import profile_tags
from node.heap import settle as settle_heap
from node.orchestration.execute import execute
from node.orchestration.job import JobInput
from node.orchestration.registry import PluginRegistry
from node.results.plan import ResultPlan
from tools.synthetic.chest_ct import make_chest_ct, write_series


def series(work: Path, slices: int) -> tuple[Path, ...]:
    """The phantom's files under ``work`` (written on first use)."""
    folder = work / f"series{slices}"
    if not folder.exists():
        datasets, _ = make_chest_ct(
            n_slices=slices, rows=512, columns=512, pixel_spacing_mm=0.7, slice_thickness_mm=1.0
        )
        write_series(datasets, folder)
    return tuple(sorted(folder.iterdir()))


def job(paths: tuple[Path, ...], job_id: int, result_dir: Path) -> JobInput:
    """A ``ct_lungs`` job over ``paths`` building its SEG and SR into ``result_dir``."""
    header = pydicom.dcmread(paths[0], stop_before_pixels=True)
    return JobInput(
        job_id=job_id,
        rule="chest-ct",
        plugin="ct_lungs",
        plugin_version="",
        device="cpu",
        template="ct_lungs",
        templates_dir=None,
        study_uid=str(header.StudyInstanceUID),
        series_uid=str(header.SeriesInstanceUID),
        instance_paths=paths,
        plan=ResultPlan.for_job(["pacs"], {"pacs": profile_tags(["seg", "sr"])}),
        result_dir=result_dir,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ainode-prof")
    parser.add_argument("--profile", type=Path, default=None, help="where the profile goes")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    paths = series(args.work, args.slices)
    registry = PluginRegistry.discover()
    profile_path = args.profile or args.work / f"job{args.slices}.prof"
    for run in range(2):
        result_dir = args.work / f"results{run}"
        shutil.rmtree(result_dir, ignore_errors=True)
        profiler = cProfile.Profile() if run == 1 else None
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        output = execute(job(paths, run + 1, result_dir), registry)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_path)
        seconds = " ".join(f"{stage}={value:.3f}" for stage, value in output.seconds.items())
        label = "profiled" if profiler is not None else "plain"
        print(
            f"run {run + 1} ({label}): {output.outcome} in "
            f"{time.perf_counter() - started:.3f} s {seconds}"
        )
        shutil.rmtree(result_dir, ignore_errors=True)
        if run == 0:
            # As `ainode serve` once its routines have loaded: without it, full garbage
            # collections over the start-up objects land in whichever stage allocates.
            settle_heap()
    pstats.Stats(str(profile_path)).sort_stats("cumulative").print_stats(args.top)
    print(f"profile: {profile_path}")


if __name__ == "__main__":
    main()
