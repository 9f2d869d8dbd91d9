"""The inference worker: one long-lived thread per device.

It claims the most urgent queued job, assembles the series into a
:class:`~node.runtime.volume.Volume`, runs the plugin (loaded once per
device), builds the result objects and writes them under
``results/<study>/<series>/job-<id>/``. A job that raises is failed with
the exception text; the worker carries on with the next one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import torch
from pydicom.dataset import Dataset

from node.jobs.queue import Job, JobQueue
from node.polling import PollingThread
from node.results import build_results, load_template_by_name
from node.runtime.plugin import RunContext
from node.runtime.registry import PluginRegistry
from node.runtime.volume import load_volume
from node.state.series import SeriesStore

log = logging.getLogger(__name__)


def _previous_report(result_dir: Path | None) -> Dataset | None:
    """The SR written by an earlier run of the same series and rule, if any."""
    if result_dir is None or not result_dir.is_dir():
        return None
    for path in sorted(result_dir.glob("*.dcm")):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        if header.get("Modality") == "SR":
            return header
    return None


class InferenceWorker(PollingThread):
    """Runs queued jobs one at a time on one device."""

    def __init__(
        self,
        queue: JobQueue,
        series: SeriesStore,
        registry: PluginRegistry,
        *,
        device: torch.device,
        results_dir: Path,
        templates_dir: Path | None,
        clock: Callable[[], float],
        on_results: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(f"worker-{device}")
        self._queue = queue
        self._series = series
        self._registry = registry
        self.device = device
        self._results_dir = results_dir
        self._templates_dir = templates_dir
        self._clock = clock
        self._on_results = on_results

    def run_once(self) -> bool:
        """Run the next queued job to its end; False when the queue was empty."""
        job = self._queue.claim_next(self._clock())
        if job is None:
            return False
        try:
            self._process(job)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self._queue.fail(job.id, reason, self._clock())
            log.error("job failed job_id=%d plugin=%s reason=%s", job.id, job.plugin, reason)
        return True

    def _process(self, job: Job) -> None:
        started = time.perf_counter()
        plugin = self._registry.get(job.plugin, self.device)
        paths = self._series.instance_paths(job.series_uid)
        volume = load_volume(paths)
        loaded = time.perf_counter()
        self._queue.add_event(
            job.id,
            self._clock(),
            "volume_loaded",
            f"slices={volume.shape[0]} seconds={loaded - started:.3f}",
        )
        plugin.check(volume)
        prediction = plugin.run(volume, RunContext(job.id, job.rule, self.device))
        inferred = time.perf_counter()
        self._queue.add_event(
            job.id, self._clock(), "inference_done", f"seconds={inferred - loaded:.3f}"
        )
        template = load_template_by_name(plugin.template, self._templates_dir)
        previous = self._queue.previous_result_dir(job.series_uid, job.rule, job.id)
        results = build_results(
            volume,
            prediction,
            template,
            revision=job.generation,
            predecessor_sr=_previous_report(previous),
        )
        result_dir = self._results_dir / job.study_uid / job.series_uid / f"job-{job.id}"
        result_dir.mkdir(parents=True, exist_ok=True)
        for dataset in results.datasets:
            dataset.save_as(
                result_dir / f"{dataset.Modality}_{dataset.SOPInstanceUID}.dcm",
                enforce_file_format=True,
            )
        encoded = time.perf_counter()
        self._queue.add_event(job.id, self._clock(), "encoded", f"seconds={encoded - inferred:.3f}")
        self._queue.inference_done(job.id, result_dir, self._clock())
        log.info(
            "results written job_id=%d plugin=%s objects=%d dir=%s load=%.2fs infer=%.2fs"
            " encode=%.2fs",
            job.id,
            job.plugin,
            len(results.datasets),
            result_dir,
            loaded - started,
            inferred - loaded,
            encoded - inferred,
        )
        self._on_results()
