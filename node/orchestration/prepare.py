"""The first step of a job: read what it needs from the state stores into a
:class:`~node.orchestration.job.JobInput`.

The series' instance paths, the plugin's name, version and template (without loading
it), the job's :class:`~node.results.plan.ResultPlan` from its destinations' result
profiles, the input-quality policy of its rule, the prior series when the routine
needs one (found here: the candidates are in the series table), the earlier results
of the same series and rule (their SRs are the predecessors; the revision counts the
generations that gave results) and the next queued job's series for reading ahead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import torch

from node.config import AnyDestination, QualitySettings, RuleSettings
from node.orchestration.job import JobInput, PriorInput
from node.orchestration.priors import NoPrior, find_prior
from node.orchestration.registry import PluginRegistry
from node.results.plan import ResultPlan
from node.state.jobs import Job, JobQueue
from node.state.series import SeriesStore


@dataclass(frozen=True)
class Sources:
    """Where :func:`prepare` looks things up, and the worker's settings."""

    queue: JobQueue
    series: SeriesStore
    registry: PluginRegistry
    device: torch.device
    results_dir: Path
    templates_dir: Path | None = None
    timeout_seconds: float | None = None
    #: Read the next queued job's series ahead.
    read_ahead: bool = True
    destinations: Callable[[], Mapping[str, AnyDestination]] = dict
    rules: Callable[[], Sequence[RuleSettings]] = field(default=list)


def result_plan(
    destination_names: Iterable[str], destinations: Mapping[str, AnyDestination]
) -> ResultPlan:
    """The plan of a job sent to ``destination_names``, from their result profiles."""
    profiles = {name: destination.result_tags for name, destination in destinations.items()}
    return ResultPlan.for_job(destination_names, profiles)


def _prior(series: SeriesStore, paths: Sequence[Path]) -> PriorInput:
    started = time.perf_counter()
    try:
        header = pydicom.dcmread(paths[0], stop_before_pixels=True)
        found = find_prior(series, header)
    except NoPrior as exc:
        return PriorInput(error=str(exc), seconds=time.perf_counter() - started)
    except (IndexError, OSError, pydicom.errors.InvalidDicomError) as exc:
        # The series itself is unreadable: loading it fails the job with that reason.
        return PriorInput(error=f"no prior can be looked up: {type(exc).__name__}")
    return PriorInput(found.paths, found.describe(), time.perf_counter() - started)


def _read_ahead(sources: Sources) -> tuple[int, tuple[Path, ...]] | None:
    """The next queued job (the one the next claim takes) and its series' paths."""
    if not sources.read_ahead:
        return None
    upcoming = sources.queue.next_queued()
    if upcoming is None:
        return None
    return upcoming.id, tuple(sources.series.instance_paths(upcoming.series_uid))


class InstancesUnreadable(RuntimeError):
    """Instance files of the job's series are not visible on this host."""


def check_instances_visible(series: SeriesStore, series_uid: str, paths: Sequence[Path]) -> None:
    """Raise :class:`InstancesUnreadable` unless every path is a file here, naming the node
    that received the missing ones: whatever runs a job must read every instance of its
    series, whichever node received it (a spool shared by the nodes, ``node.spool_dir``)."""
    missing = [path for path in paths if not path.is_file()]
    if not missing:
        return
    receivers = series.instance_receivers(series_uid)
    by_node: dict[str, list[Path]] = {}
    for path in missing:
        by_node.setdefault(receivers.get(path) or "unknown", []).append(path)
    named = "; ".join(
        f"{len(files)} received by node {node} (e.g. {files[0]})"
        for node, files in sorted(by_node.items())
    )
    raise InstancesUnreadable(
        f"{len(missing)} of {len(paths)} instance files of the series are not readable on this"
        f" host: {named}. Every node that runs jobs must mount the shared spool"
        " (node.spool_dir) at the same path."
    )


def prepare(job: Job, sources: Sources) -> JobInput:
    """The :class:`JobInput` of the claimed ``job``.

    Raises
    ------
    InstancesUnreadable
        An instance file is missing here (e.g. received by a node whose spool this host
        does not see); the message names that node.
    """
    paths = tuple(sources.series.instance_paths(job.series_uid))
    check_instances_visible(sources.series, job.series_uid, paths)
    try:
        info = sources.registry.plugin_info(job.plugin)
    except Exception:  # unknown or broken: executing it fails the job with the reason
        version, template, needs_prior = "", "", False
    else:
        version, template, needs_prior = info.version, info.template, info.needs_prior
    quality = next((r.quality for r in sources.rules() if r.name == job.rule), QualitySettings())
    return JobInput(
        job_id=job.id,
        rule=job.rule,
        plugin=job.plugin,
        plugin_version=version,
        device=str(sources.device),
        template=template,
        templates_dir=sources.templates_dir,
        study_uid=job.study_uid,
        series_uid=job.series_uid,
        instance_paths=paths,
        plan=result_plan(job.destinations, sources.destinations()),
        result_dir=sources.results_dir / job.study_uid / job.series_uid / f"job-{job.id}",
        shadow=job.shadow,
        timeout_seconds=sources.timeout_seconds,
        attempt=job.owner or "",
        quality=quality,
        prior=_prior(sources.series, paths) if needs_prior else None,
        previous_result_dir=sources.queue.previous_result_dir(job.series_uid, job.rule, job.id),
        # The revision counts the generations that produced results, not the series'
        # generations: after one that produced nothing, this is no revision.
        revision=1
        + sources.queue.earlier_generations_with_results(job.series_uid, job.rule, job.generation),
        read_ahead=_read_ahead(sources),
        priority=job.priority,
    )


def result_tags(
    destination_names: Iterable[str], destinations: Mapping[str, AnyDestination]
) -> frozenset[str]:
    """Union of the file tags of the job's destinations; SEG + SR without any."""
    return result_plan(destination_names, destinations).requested
