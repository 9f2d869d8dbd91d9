"""The inference worker: one long-lived thread per device.

It claims the most urgent queued job, assembles the series into a
:class:`~node.contract.volume.Volume`, checks it against the plugin's declared
:class:`~node.contract.plugin.Accepts` and ``check()``, runs the plugin (loaded
once per device and kept loaded), builds the result objects and writes them
under ``results/<study>/<series>/job-<id>/``. A job that raises is failed with
the exception text; one whose input the gate or the routine's ``Accepts``
refuses ends ``skipped`` with the failed checks. The worker carries on with
the next one.

While a job runs, the series of the next queued job is read in a background
thread (decoding overlaps inference); the prefetched volume is used only if
that job is the next one claimed and its instances are unchanged. Each job has
a deadline: plugins check it between steps (:meth:`RunContext.raise_if_expired`)
and a job that ends past it is failed, its results discarded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import pydicom
import torch
from pydicom.dataset import Dataset

from node.config import AnyDestination, QualitySettings, RuleSettings
from node.contract.assemble import load_volume
from node.contract.kinds import (
    DEFAULT_PROFILE,
    SEG_KINDS,
    ResultKind,
    file_name,
    file_tag,
    profile_tags,
    tag_kind,
)
from node.contract.plugin import InferencePlugin, Prediction, RunContext
from node.contract.volume import Volume
from node.errors import InputRejected, InputSkipped, JobTimeout
from node.faults import fault_point
from node.orchestration.gate import GateResult, QualitySkipped, gate_series
from node.orchestration.priors import find_prior
from node.orchestration.registry import PluginRegistry
from node.orchestration.summary import prediction_json, quality_json, write_summary
from node.polling import PollingThread
from node.results import build_results, load_template_by_name
from node.results.availability import unavailable_tags
from node.results.manifest import clear_results, write_manifest
from node.results.quality_note import add_quality_warnings_to_srs
from node.results.radiomics import write_radiomics
from node.spool import write_durably
from node.state.events import EventCode
from node.state.jobs import Job, JobQueue
from node.state.lease import owner_name
from node.state.series import SeriesStore

log = logging.getLogger(__name__)

#: First and longest wait between two attempts to record a failed job.
RECORD_RETRY_SECONDS = 0.5
RECORD_RETRY_MAX_SECONDS = 30.0


def _previous_reports(result_dir: Path | None) -> dict[str, Dataset]:
    """The SRs written by an earlier run of the same series and rule, by file tag."""
    if result_dir is None or not result_dir.is_dir():
        return {}
    reports: dict[str, Dataset] = {}
    for path in sorted(result_dir.glob("*.dcm")):
        tag = file_tag(path.name)
        if tag is not None and tag_kind(tag) is ResultKind.SR:
            reports[tag] = pydicom.dcmread(path, stop_before_pixels=True)
    return reports


def _write_dataset(dataset: Dataset, handle: BinaryIO) -> None:
    """Encode ``dataset`` as a DICOM file into ``handle`` (a crash test can stop it half-way)."""
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    data = buffer.getbuffer()
    handle.write(data[: len(data) // 2])
    fault_point("result_file_half_written")
    handle.write(data[len(data) // 2 :])


def result_tags(
    destination_names: Iterable[str], destinations: Mapping[str, AnyDestination]
) -> frozenset[str]:
    """Union of the file tags of the job's destinations; SEG + SR without any."""
    tags: set[str] = set()
    for name in destination_names:
        destination = destinations.get(name)
        if destination is not None:
            tags |= destination.result_tags
    return frozenset(tags) if tags else profile_tags(DEFAULT_PROFILE)


def _check_accepted(plugin: InferencePlugin, volume: Volume) -> None:
    """:func:`~node.contract.plugin.check_input`, a refusal raised as :class:`InputSkipped`
    (input outside what the routine takes is a skip, not a failure)."""
    problems = plugin.accepts.problems(volume)
    if problems:
        raise InputSkipped(
            "input refused by the routine's Accepts: " + "; ".join(problems),
            source="accepts",
            checks=[{"check": "accepts", "message": problem} for problem in problems],
        )
    try:
        plugin.check(volume)
    except InputSkipped:
        raise
    except InputRejected as exc:
        raise InputSkipped(
            f"input refused by the routine's check: {exc}",
            source="accepts",
            checks=[{"check": "plugin_check", "message": str(exc)}],
        ) from exc


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
        job_timeout_seconds: float | None = None,
        prefetch: bool = True,
        monotonic: Callable[[], float] = time.monotonic,
        destinations: Callable[[], Mapping[str, AnyDestination]] = dict,
        rules: Callable[[], Sequence[RuleSettings]] = list,
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
        self._timeout = job_timeout_seconds
        self._monotonic = monotonic
        self._prefetch_enabled = prefetch
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"read-{device}")
        self._prefetched: tuple[int, tuple[Path, ...], Future[Volume]] | None = None
        self._device_selected = False
        self._destinations = destinations
        self._rules = rules
        #: Why the worker cannot record a job's state (for ``/readyz``), or None.
        self.problem: str | None = None
        #: Who holds this worker's jobs (``host:pid:worker-<device>``; the job's lease owner).
        self.owner = owner_name(f"worker-{device}")

    def run_once(self) -> bool:
        """Run the next queued job to its end; False when the queue was empty."""
        if self.device.type == "cuda" and not self._device_selected:
            torch.cuda.set_device(self.device)  # this thread's current device
            self._device_selected = True
        job = self._queue.claim_next(self._clock(), self.owner)
        if job is None:
            return False
        try:
            with self._queue.keep_lease(job, self._clock).held():
                self._process(job)
        except InputSkipped as exc:
            log.warning(
                "job skipped job_id=%d plugin=%s source=%s checks=%s",
                job.id,
                job.plugin,
                exc.source,
                ",".join(c["check"] for c in exc.checks),
            )
            skipped = exc
            self._record_outcome(
                job,
                "skipped",
                lambda: self._queue.skip(
                    job.id,
                    str(skipped),
                    self._clock(),
                    source=skipped.source,
                    checks=skipped.checks,
                    owner=self.owner,
                ),
            )
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.error("job failed job_id=%d plugin=%s reason=%s", job.id, job.plugin, reason)
            self._record_outcome(
                job,
                "failed",
                lambda: self._queue.fail(job.id, reason, self._clock(), owner=self.owner),
            )
        return True

    def _record_outcome(self, job: Job, outcome: str, record: Callable[[], None]) -> None:
        """Record ``job``'s end (``failed`` or ``skipped``) by calling ``record``, retrying
        until the database takes it (e.g. a full disk).

        Meanwhile :attr:`problem` says why (``/readyz`` reports it) and the worker
        takes no other job: a job is never left ``running`` while the node is up.
        """
        delay = RECORD_RETRY_SECONDS
        while True:
            try:
                record()
            except Exception as exc:
                if self.problem is None:
                    log.error(
                        "cannot record a %s job, retrying job_id=%d error=%s", outcome, job.id, exc
                    )
                self.problem = f"cannot record job {job.id} as {outcome}: {exc}"
                if self._stop.wait(delay):  # stopping: the restart re-queues the job
                    return
                delay = min(delay * 2, RECORD_RETRY_MAX_SECONDS)
                continue
            if self.problem is not None:
                log.info("%s job recorded after retries job_id=%d", outcome, job.id)
                self.problem = None
            return

    # -- prefetch ---------------------------------------------------------------

    def _next_queued(self) -> Job | None:
        queued = self._queue.jobs(state="queued")
        return min(queued, key=lambda j: (j.priority, j.id)) if queued else None

    def _start_prefetch(self) -> None:
        """Read the next queued job's series in the background (does not claim it)."""
        if not self._prefetch_enabled:
            return
        upcoming = self._next_queued()
        if upcoming is None:
            return
        paths = tuple(self._series.instance_paths(upcoming.series_uid))
        if self._prefetched is not None and self._prefetched[:2] == (upcoming.id, paths):
            return
        self._prefetched = (upcoming.id, paths, self._reader.submit(load_volume, paths))
        log.debug("prefetch started job_id=%d instances=%d", upcoming.id, len(paths))

    def _volume(self, job: Job) -> tuple[Volume, bool]:
        """The job's volume (prefetched when it matches) and whether it was prefetched."""
        paths = tuple(self._series.instance_paths(job.series_uid))
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and prefetched[:2] == (job.id, paths):
            return prefetched[2].result(), True
        return load_volume(paths), False

    def _gated_volume(self, job: Job, plugin: InferencePlugin) -> tuple[Volume, bool, GateResult]:
        """The job's volume through the input-quality gate (events record what it found)."""
        assert plugin.validated_on is not None
        policy = next((r.quality for r in self._rules() if r.name == job.rule), QualitySettings())
        prefetched = [False]

        def load() -> Volume:
            volume, prefetched[0] = self._volume(job)
            return volume

        paths = self._series.instance_paths(job.series_uid)
        try:
            gated = gate_series(load, paths, plugin.validated_on, policy)
        except QualitySkipped as exc:
            self._queue.add_event(job.id, self._clock(), EventCode.QUALITY_SKIPPED, str(exc))
            raise
        now = self._clock()
        self._queue.add_event(
            job.id,
            now,
            EventCode.QUALITY_CHECKED,
            f"{gated.decision.action} {gated.measured.summary()} seconds={gated.seconds:.3f}",
        )
        for warning in gated.decision.warnings:
            self._queue.add_event(job.id, now, EventCode.QUALITY_WARNING, warning)
        for ignored in gated.decision.ignored:
            self._queue.add_event(job.id, now, EventCode.QUALITY_IGNORED, ignored)
        if gated.decision.warnings:
            log.warning(
                "input-quality warnings job_id=%d checks=%s",
                job.id,
                ",".join(c.name for c in gated.decision.failed),
            )
        return gated.volume, prefetched[0], gated

    def _check_deadline(self, job: Job, deadline: float | None) -> None:
        if deadline is not None and self._monotonic() > deadline:
            raise JobTimeout(f"job ran longer than {self._timeout:g} s")

    def _process(self, job: Job) -> None:
        started = time.perf_counter()
        deadline = None if self._timeout is None else self._monotonic() + self._timeout
        plugin = self._registry.get(job.plugin, self.device)
        if plugin.resources.needs_gpu and self.device.type != "cuda":
            raise InputRejected(f"plugin {job.plugin!r} needs a GPU; this worker runs on the CPU")
        gated: GateResult | None = None
        if plugin.validated_on is None:
            volume, was_prefetched = self._volume(job)
        else:
            volume, was_prefetched, gated = self._gated_volume(job, plugin)
        loaded = time.perf_counter()
        self._queue.add_event(
            job.id,
            self._clock(),
            EventCode.VOLUME_LOADED,
            f"slices={volume.shape[0]} seconds={loaded - started:.3f} prefetched={was_prefetched}",
        )
        self._start_prefetch()
        _check_accepted(plugin, volume)
        prior = None
        if plugin.needs_prior:
            looked_up = time.perf_counter()
            found = find_prior(self._series, volume)
            prior = load_volume(found.paths)
            self._queue.add_event(
                job.id,
                self._clock(),
                EventCode.PRIOR_FOUND,
                f"{found.describe()} seconds={time.perf_counter() - looked_up:.3f}",
            )
        context = RunContext(
            job.id, job.rule, self.device, deadline=deadline, clock=self._monotonic, prior=prior
        )
        fault_point("inference_started")
        prediction = plugin.run(volume, context)
        fault_point("inference_done")
        self._check_deadline(job, deadline)
        inferred = time.perf_counter()
        self._queue.add_event(
            job.id, self._clock(), EventCode.INFERENCE_DONE, f"seconds={inferred - loaded:.3f}"
        )
        template = load_template_by_name(plugin.template, self._templates_dir)
        previous = self._queue.previous_result_dir(job.series_uid, job.rule, job.id)
        tags = result_tags(job.destinations, self._destinations())
        if prediction.label_map is None:
            # A classifier or detector: no SEG of any kind; the SR references none.
            no_seg = dict.fromkeys(
                (t for t in tags if tag_kind(t) in SEG_KINDS), "the routine gives no label map"
            )
            tags = self._skip_results(job, tags, no_seg, log_reason="no_label_map")
        elif prediction.probabilities is None:
            # A FRACTIONAL SEG, the SR that references it and a KO that lists it.
            no_fractional = dict.fromkeys(
                (t for t in tags if ResultKind.FRACTIONAL_SEG.value in t),
                "the plugin gives no probabilities",
            )
            tags = self._skip_results(
                job, tags, no_fractional, log_reason="no_probabilities", level=logging.WARNING
            )
        tags = self._registration_tags(job, prediction, tags)
        unavailable = unavailable_tags(prediction, tags)
        tags = self._skip_results(job, tags, unavailable, log_reason="not_in_prediction")
        if not tags and not job.destinations:
            # Results kept on the node: an image-to-image routine keeps its derived series,
            # a map its Parametric Map, whatever the default SEG + SR profile says.
            kept = profile_tags([ResultKind.DERIVED.value, ResultKind.PMAP.value])
            tags = frozenset(kept - set(unavailable_tags(prediction, kept)))
        if not tags:
            raise InputRejected(
                "the plugin's prediction fills none of the result kinds its destinations take"
            )
        # The result's revision counts the generations that produced results, not the
        # series' generations: after one that produced nothing, this is no revision.
        revision = 1 + self._queue.earlier_generations_with_results(
            job.series_uid, job.rule, job.generation
        )
        results = build_results(
            volume,
            prediction,
            template,
            revision=revision,
            predecessors=_previous_reports(previous),
            tags=tags,
        )
        if gated is not None:  # the gate's warnings go into every SR (Qualitative Evaluations)
            add_quality_warnings_to_srs(results.tagged(), gated.decision.warnings)
        self._check_deadline(job, deadline)
        result_dir = self._results_dir / job.study_uid / job.series_uid / f"job-{job.id}"
        result_dir.mkdir(parents=True, exist_ok=True)
        stale = clear_results(result_dir)
        if stale:  # an earlier run of this job was interrupted or its files were damaged
            self._queue.add_event(
                job.id, self._clock(), EventCode.RESULTS_STALE_REMOVED, ",".join(stale)
            )
            log.warning("stale result files removed job_id=%d count=%d", job.id, len(stale))
        write_summary(
            result_dir,
            prediction_json(
                prediction,
                job_id=job.id,
                rule=job.rule,
                plugin=job.plugin,
                plugin_version=plugin.version,
                template=plugin.template,
                study_uid=job.study_uid,
                series_uid=job.series_uid,
                shadow=job.shadow,
                quality=None if gated is None else quality_json(gated.measured, gated.decision),
            ),
        )
        written = []
        for tag, dataset in results.tagged():
            path = result_dir / file_name(tag, str(dataset.SOPInstanceUID))
            write_durably(path, partial(_write_dataset, dataset))
            written.append(path)
        write_manifest(result_dir, written)  # last: the exporter sends only what it lists whole
        if results.radiomics is not None:
            write_radiomics(result_dir, results.radiomics)
        fault_point("results_written")
        encoded = time.perf_counter()
        self._queue.add_event(
            job.id,
            self._clock(),
            EventCode.RESULTS_ENCODED,
            f"seconds={encoded - inferred:.3f} "
            + " ".join(f"{tag}={value:.3f}" for tag, value in results.seconds.items()),
        )
        self._queue.inference_done(job.id, result_dir, self._clock(), owner=self.owner)
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

    def _skip_results(
        self,
        job: Job,
        tags: frozenset[str],
        reasons: Mapping[str, str],
        *,
        log_reason: str,
        level: int = logging.INFO,
    ) -> frozenset[str]:
        """``tags`` less those in ``reasons`` (tag → why), with a job event and a log line.

        The ``results_skipped`` event names the tags with each reason: ``"seg,sr: why"``.
        """
        if not reasons:
            return tags
        by_reason: dict[str, list[str]] = {}
        for tag, why in sorted(reasons.items()):
            by_reason.setdefault(why, []).append(tag)
        detail = "; ".join(f"{','.join(named)}: {why}" for why, named in by_reason.items())
        self._queue.add_event(job.id, self._clock(), EventCode.RESULTS_SKIPPED, detail)
        named = ",".join(sorted(reasons))
        log.log(
            level, "result kinds skipped job_id=%d tags=%s reason=%s", job.id, named, log_reason
        )
        return frozenset(tags - set(reasons))

    def _registration_tags(
        self, job: Job, prediction: Prediction, tags: frozenset[str]
    ) -> frozenset[str]:
        """``reg`` only from a registration, and a registration without a label map gives
        nothing else (a REG is built even when no destination's profile lists it)."""
        reg = ResultKind.REG.value
        if prediction.registration is None:
            no_reg = {reg: "the plugin gives no registration"} if reg in tags else {}
            return self._skip_results(job, tags, no_reg, log_reason="no_registration")
        if prediction.label_map is not None:
            return frozenset(tags | {reg})
        if reg not in tags and job.destinations:
            self._queue.add_event(
                job.id,
                self._clock(),
                EventCode.RESULTS_SKIPPED,
                "reg is built but no destination of this job lists 'reg' in its results",
            )
            log.warning("reg not sent job_id=%d reason=no_destination_profile_lists_reg", job.id)
        return frozenset({reg})

    def stop(self, timeout: float = 60.0) -> None:
        super().stop(timeout)
        self._reader.shutdown(wait=False, cancel_futures=True)
