"""The middle step of a job: a :class:`~node.orchestration.job.JobInput` in, a
:class:`~node.orchestration.job.JobOutput` out, touching only files.

It reads the series into a :class:`~node.contract.volume.Volume` (through the
input-quality gate when the routine declares ``validated_on``), checks it against the
routine's ``Accepts`` and ``check()``, reads the prior the job was given, runs the
routine (loaded once per device by the registry and kept loaded), decides the result
kinds with the job's :class:`~node.results.plan.ResultPlan`, builds the objects and
writes them under the job's result directory (``summary.json``, the DICOM files, the
manifest last, radiomics). No database, no queue, no wall clock: only the job's time
limit is measured (``monotonic``). Whatever it raises becomes the output's outcome:
:class:`~node.errors.InputSkipped` gives ``skipped``, anything else ``failed``; the
events gathered until then are kept.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import pydicom
import torch
from pydicom.dataset import Dataset

from node.contract.assemble import load_volume
from node.contract.kinds import ResultKind, file_name, file_tag, tag_kind
from node.contract.plugin import InferencePlugin, Prediction, RunContext, ValidatedInput
from node.contract.volume import Volume
from node.engine.quality import Measurements
from node.errors import InputRejected, InputSkipped, JobTimeout
from node.faults import delay_point, fault_point
from node.orchestration.gate import GateResult, QualitySkipped, gate_series
from node.orchestration.job import DONE, FAILED, SKIPPED, JobInput, JobOutput, ResultFile
from node.orchestration.priors import NoPrior
from node.orchestration.registry import PluginRegistry
from node.orchestration.summary import prediction_json, quality_json, write_summary
from node.results import build_results, load_template_by_name
from node.results.encode import encode_chunks, iter_bytes
from node.results.manifest import clear_results, write_manifest
from node.results.plan import Resolved
from node.results.quality_note import add_quality_warnings_to_srs
from node.results.radiomics import write_radiomics
from node.spool import write_durably
from node.state.events import EventCode

log = logging.getLogger(__name__)

#: Called with the volume and prediction of a job that ran (``ainode evaluate``).
Inspect = Callable[[Volume, Prediction], None]


class SeriesReader(Protocol):
    """How ``execute`` reads a job's series (an executor may read ahead)."""

    def read(self, job_id: int, paths: tuple[Path, ...]) -> tuple[Volume, bool]:
        """The volume of ``paths`` and whether it had been read ahead."""
        ...

    def read_ahead(self, job_id: int, paths: tuple[Path, ...]) -> None:
        """Start reading the series of the job that comes next, if the reader can."""
        ...

    def measured(self, volume: Volume, validated: ValidatedInput) -> Measurements | None:
        """The input-quality measurements of ``volume`` (as :meth:`read` returned it)
        against ``validated``, when they were made while it was read ahead."""
        ...


class DirectReader:
    """Reads each series when asked; never ahead."""

    def read(self, job_id: int, paths: tuple[Path, ...]) -> tuple[Volume, bool]:
        return load_volume(paths), False

    def read_ahead(self, job_id: int, paths: tuple[Path, ...]) -> None:
        return None

    def measured(self, volume: Volume, validated: ValidatedInput) -> Measurements | None:
        return None


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
    """Encode ``dataset`` as a DICOM file into ``handle`` (a crash test can stop it half-way).

    The bytes are pydicom's (``dcmwrite``), written by :func:`encode_chunks` in one pass.
    """
    chunks = encode_chunks(dataset)
    half = sum(len(chunk) for chunk in chunks) // 2
    written = 0
    for chunk in iter_bytes(chunks):  # a streamed value (a large SEG's frames) made here
        if written <= half < written + len(chunk):
            view = memoryview(chunk)
            handle.write(view[: half - written])
            fault_point("result_file_half_written")
            handle.write(view[half - written :])
        else:
            handle.write(chunk)
        written += len(chunk)


def check_accepted(plugin: InferencePlugin, volume: Volume) -> None:
    """The routine's ``Accepts`` and ``check()``; a refusal raised as :class:`InputSkipped`
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


class LeaseLost(RuntimeError):
    """The worker's lease on the job lapsed and another owner may run it: stop, write
    nothing more."""


#: Attempts ``(job id, attempt)`` whose lease was lost (set by the worker's lease keeper;
#: seen by an execution in this process at its next check).
_lost: set[tuple[int, str]] = set()
_lost_lock = threading.Lock()


def lease_lost(job_id: int, attempt: str) -> None:
    """Tell the execution of ``job_id`` by ``attempt`` (in this process) to stop."""
    with _lost_lock:
        _lost.add((job_id, attempt))


_ATTEMPT = ".attempt."


def _attempt_dir(result_dir: Path, attempt: str) -> Path:
    """The attempt's own temporary directory beside ``result_dir`` (renamed into place)."""
    safe = re.sub(r"[^\w.:@-]", "_", attempt)
    return result_dir.with_name(f".{result_dir.name}{_ATTEMPT}{safe}")


def _dead_attempts(result_dir: Path) -> list[Path]:
    """Temporary directories of this job's attempts whose process (on this host) ended."""
    dead = []
    for path in result_dir.parent.glob(f".{result_dir.name}{_ATTEMPT}*"):
        host, _, rest = path.name.partition(_ATTEMPT)[2].partition(":")
        pid = rest.partition(":")[0]
        if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            dead.append(path)
        except PermissionError:
            pass
    return dead


class _Run:
    """One execution: the events and timings gathered so far."""

    def __init__(self, job: JobInput, monotonic: Callable[[], float]) -> None:
        self.job = job
        self.events: list[tuple[EventCode, str, float]] = []
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.quality: dict[str, object] | None = None
        self.monotonic = monotonic
        timeout = job.timeout_seconds
        self.deadline = None if timeout is None else monotonic() + timeout

    def event(self, code: EventCode, detail: str) -> None:
        self.events.append((code, detail, time.perf_counter() - self.started))

    def check_deadline(self) -> None:
        with _lost_lock:
            lost = (self.job.job_id, self.job.attempt) in _lost
        if lost:
            raise LeaseLost(f"lease of job {self.job.job_id} lost by {self.job.attempt}")
        if self.deadline is not None and self.monotonic() > self.deadline:
            raise JobTimeout(f"job ran longer than {self.job.timeout_seconds:g} s")

    def volume(
        self, plugin: InferencePlugin, reader: SeriesReader
    ) -> tuple[Volume, GateResult | None]:
        """The job's volume, through the input-quality gate when the routine has one."""
        job = self.job
        started = time.perf_counter()
        prefetched = False

        def load() -> Volume:
            nonlocal prefetched
            volume, prefetched = reader.read(job.job_id, job.instance_paths)
            return volume

        gated: GateResult | None = None
        if plugin.validated_on is None:
            volume = load()
        else:
            try:
                gated = gate_series(
                    load,
                    job.instance_paths,
                    plugin.validated_on,
                    job.quality,
                    premeasured=reader.measured,
                )
            except QualitySkipped as exc:
                self.event(EventCode.QUALITY_SKIPPED, str(exc))
                raise
            volume = gated.volume
            self.quality = quality_json(gated.measured, gated.decision)
            decision = gated.decision
            self.event(
                EventCode.QUALITY_CHECKED,
                f"{decision.action} {gated.measured.summary()} seconds={gated.seconds:.3f}"
                + (" measured=ahead" if gated.measured_ahead else ""),
            )
            for warning in decision.warnings:
                self.event(EventCode.QUALITY_WARNING, warning)
            for ignored in decision.ignored:
                self.event(EventCode.QUALITY_IGNORED, ignored)
            if decision.warnings:
                log.warning(
                    "input-quality warnings job_id=%d checks=%s",
                    job.job_id,
                    ",".join(c.name for c in decision.failed),
                )
        self.seconds["load"] = time.perf_counter() - started
        self.event(
            EventCode.VOLUME_LOADED,
            f"slices={volume.shape[0]} seconds={self.seconds['load']:.3f} prefetched={prefetched}",
        )
        return volume, gated

    def prior(self) -> Volume | None:
        """The prior series' volume, when the job was given one."""
        prior = self.job.prior
        if prior is None:
            return None
        if prior.error is not None:
            raise NoPrior(prior.error)
        volume = load_volume(prior.paths)
        self.event(EventCode.PRIOR_FOUND, f"{prior.description} seconds={prior.seconds:.3f}")
        return volume

    def plan(self, prediction: Prediction) -> Resolved:
        """The tags to build; each tag left out gives a ``results_skipped`` event."""
        assert self.job.plan is not None
        resolved = self.job.plan.resolve(prediction)
        for dropped in resolved.dropped:
            self.event(EventCode.RESULTS_SKIPPED, dropped.detail())
            log.log(
                dropped.level,
                "result kinds skipped job_id=%d tags=%s reason=%s",
                self.job.job_id,
                ",".join(sorted(dropped.reasons)),
                dropped.log_reason,
            )
        for notice in resolved.notices:
            self.event(EventCode.RESULTS_SKIPPED, notice)
            log.warning(
                "reg not sent job_id=%d reason=no_destination_profile_lists_reg", self.job.job_id
            )
        return resolved

    def output(self, outcome: str, **fields: object) -> JobOutput:
        return JobOutput(
            self.job.job_id,
            outcome,
            events=tuple(self.events),
            elapsed=time.perf_counter() - self.started,
            seconds=dict(self.seconds),
            quality=self.quality,
            **fields,  # type: ignore[arg-type]
        )


def execute(
    job: JobInput,
    registry: PluginRegistry,
    *,
    reader: SeriesReader | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    inspect: Inspect | None = None,
) -> JobOutput:
    """Run ``job`` (see the module doc); never raises for the job's own faults.

    Parameters
    ----------
    reader
        How the series is read (default: when asked, never ahead).
    monotonic
        The clock of the job's time limit.
    inspect
        Called with the volume and the prediction once the routine ran (evaluation);
        a job whose ``plan`` is None builds and writes nothing.
    """
    run = _Run(job, monotonic)
    try:
        return _execute(run, registry, reader or DirectReader(), inspect)
    except LeaseLost as exc:
        return run.output(FAILED, message=str(exc), error_type=type(exc).__name__)
    except InputSkipped as exc:
        return run.output(
            SKIPPED,
            message=str(exc),
            source=exc.source,
            checks=tuple(exc.checks),
            input_rejected=True,
        )
    except Exception as exc:
        return run.output(
            FAILED,
            message=str(exc),
            error_type=type(exc).__name__,
            input_rejected=isinstance(exc, InputRejected),
        )
    finally:
        with _lost_lock:
            _lost.discard((job.job_id, job.attempt))


def _execute(
    run: _Run, registry: PluginRegistry, reader: SeriesReader, inspect: Inspect | None
) -> JobOutput:
    job = run.job
    device = torch.device(job.device)
    plugin = registry.get(job.plugin, device)
    if plugin.resources.needs_gpu and device.type != "cuda":
        raise InputRejected(f"plugin {job.plugin!r} needs a GPU; this worker runs on the CPU")
    volume, gated = run.volume(plugin, reader)
    loaded_at = time.perf_counter()
    if job.read_ahead is not None:
        reader.read_ahead(*job.read_ahead)
    check_accepted(plugin, volume)
    prior = run.prior()
    context = RunContext(
        job.job_id, job.rule, device, deadline=run.deadline, clock=run.monotonic, prior=prior
    )
    fault_point("inference_started")
    delay_point("inference_running")
    prediction = plugin.run(volume, context)
    fault_point("inference_done")
    run.check_deadline()
    run.seconds["infer"] = time.perf_counter() - loaded_at
    run.event(EventCode.INFERENCE_DONE, f"seconds={run.seconds['infer']:.3f}")
    if inspect is not None:
        inspect(volume, prediction)
    if job.plan is None:
        return run.output(DONE)
    return _write_results(run, plugin, volume, prediction, gated)


def _write_results(
    run: _Run,
    plugin: InferencePlugin,
    volume: Volume,
    prediction: Prediction,
    gated: GateResult | None,
) -> JobOutput:
    """Build the planned result objects and write them, the manifest last."""
    job = run.job
    assert job.plan is not None and job.result_dir is not None
    encode_started = time.perf_counter()
    template = load_template_by_name(job.template, job.templates_dir)
    resolved = run.plan(prediction)
    results = build_results(
        volume,
        prediction,
        template,
        revision=job.revision,
        predecessors=_previous_reports(job.previous_result_dir),
        tags=resolved.tags,
    )
    if gated is not None:  # the gate's warnings go into every SR (Qualitative Evaluations)
        add_quality_warnings_to_srs(results.tagged(), gated.decision.warnings)
    run.check_deadline()
    # Written into this attempt's own directory, then renamed into place: a worker whose
    # lease lapsed never deletes or overwrites the files of the job's new holder.
    result_dir = job.result_dir
    result_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = _attempt_dir(result_dir, job.attempt)
    stale = []
    for leftover in [staging, *_dead_attempts(result_dir)]:  # never a live holder's
        if leftover.is_dir():
            stale += clear_results(leftover)
            shutil.rmtree(leftover, ignore_errors=True)
    if stale:  # an earlier run of this job was interrupted
        run.event(EventCode.RESULTS_STALE_REMOVED, ",".join(sorted(stale)))
        log.warning("stale result files removed job_id=%d count=%d", job.job_id, len(stale))
    staging.mkdir()
    try:
        files, summary = _write_files(run, plugin, prediction, staging, results, result_dir)
        run.check_deadline()  # the lease is still held: the results may replace the job's
        _publish(run, staging, result_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fault_point("results_written")
    run.seconds["encode"] = time.perf_counter() - encode_started
    run.event(
        EventCode.RESULTS_ENCODED,
        f"seconds={run.seconds['encode']:.3f} "
        + " ".join(f"{tag}={value:.3f}" for tag, value in results.seconds.items()),
    )
    return run.output(DONE, result_dir=result_dir, files=tuple(files), summary=summary)


def _write_files(
    run: _Run,
    plugin: InferencePlugin,
    prediction: Prediction,
    staging: Path,
    results: Any,
    result_dir: Path,
) -> tuple[list[ResultFile], dict[str, Any]]:
    """Write the summary, the result objects and the manifest (last) into ``staging``;
    the returned paths are where they will be once published into ``result_dir``."""
    job = run.job
    assert job.plan is not None
    summary = prediction_json(
        prediction,
        job_id=job.job_id,
        rule=job.rule,
        plugin=job.plugin,
        plugin_version=plugin.version,
        template=plugin.template,
        study_uid=job.study_uid,
        series_uid=job.series_uid,
        shadow=job.shadow,
        quality=run.quality,
    )
    write_summary(staging, summary)
    files: list[ResultFile] = []
    names: list[Path] = []
    for tag, dataset in results.tagged():
        name = file_name(tag, str(dataset.SOPInstanceUID))
        write_durably(staging / name, partial(_write_dataset, dataset))
        names.append(staging / name)
        files.append(ResultFile(result_dir / name, tag, job.plan.destinations_of(tag)))
    write_manifest(staging, names)  # last: the exporter sends only those
    if results.radiomics is not None:
        write_radiomics(staging, results.radiomics)
    return files, summary


def _publish(run: _Run, staging: Path, result_dir: Path) -> None:
    """Rename ``staging`` to ``result_dir``; an earlier run's directory there is replaced
    (its files named in a ``results.stale_removed`` event)."""
    if result_dir.exists():
        stale = clear_results(result_dir)
        old = staging.with_suffix(".old")
        os.replace(result_dir, old)
        shutil.rmtree(old, ignore_errors=True)
        if stale:  # an earlier run of this job was interrupted or its files were damaged
            run.event(EventCode.RESULTS_STALE_REMOVED, ",".join(stale))
            log.warning("stale result files removed job_id=%d count=%d", run.job.job_id, len(stale))
    os.replace(staging, result_dir)
