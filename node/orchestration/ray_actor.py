"""What runs inside a Ray actor: one routine, loaded once and kept warm.

:class:`RoutineHost` is a plain class; :mod:`node.orchestration.ray_executor` makes it a
Ray actor (``ray.remote(...)(RoutineHost)``), so this module imports no Ray at the top and
its code is the node's own :func:`~node.orchestration.execute.execute`. A job reaches it
as a :class:`~node.orchestration.job.JobInput` and, with the object-store transfer, a
:class:`Shipment` of the files it reads (the series, the prior, the earlier SRs); the
actor writes them under its own temporary directory, points the job at them, runs it
and sends back the :class:`~node.orchestration.job.JobOutput` with the result files'
bytes (:class:`Returned`). The node writes those under the job's result directory.

The temporary directory (``ainode-actor-<pid>@<host>-…``) goes when the actor exits normally. An
actor killed mid-job (``ray.kill``, a node stopped, a host out of memory) cannot remove
it, and it holds that job's instances; so each new actor on the host removes the
directories of actors that no longer run (:func:`remove_stale_workdirs`).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from node.contract.plugin import InferencePlugin
from node.heap import settle as settle_heap
from node.host import process_runs
from node.orchestration.execute import execute
from node.orchestration.job import JobInput, JobOutput
from node.orchestration.registry import PluginRegistry

#: A file as it travels: its name and its bytes.
Blob = tuple[str, bytes]


@dataclass(frozen=True)
class Shipment:
    """The files a job reads, as bytes (the object-store transfer)."""

    instances: tuple[Blob, ...]
    prior: tuple[Blob, ...] = ()
    previous_results: tuple[Blob, ...] = ()


@dataclass(frozen=True)
class HostInfo:
    """Where an actor runs (``ainode plugins list``, the job's events)."""

    plugin: str
    host: str
    pid: int
    node_id: str
    device: str
    gpu_ids: tuple[str, ...]
    workdir: str
    load_error: str | None
    #: Objects moved out of the collector's reach once the routine loaded (:mod:`node.heap`).
    heap_frozen: int = 0


@dataclass(frozen=True)
class Returned:
    """A job's output and its result files (names relative to the result directory)."""

    output: JobOutput
    files: tuple[Blob, ...]
    host: HostInfo
    #: Where the actor wrote the job's inputs (under its own temporary directory).
    inputs_dir: str
    #: Wall-clock times (``time.time()``) the actor started and ended the call.
    started_at: float
    ended_at: float


log = logging.getLogger(__name__)

WORKDIR_PREFIX = "ainode-actor-"


def _workdir_prefix() -> str:
    """This process's actor directory prefix: ``ainode-actor-<pid>@<host>-`` (the host
    because containers with their own process ids may share a temporary directory)."""
    return f"{WORKDIR_PREFIX}{os.getpid()}@{socket.gethostname()}-"


def remove_stale_workdirs(parent: Path) -> list[Path]:
    """Remove the actor directories in ``parent`` whose actor process no longer runs on
    this host (killed before it could remove its own); the ones removed."""
    host = socket.gethostname()
    removed = []
    for path in parent.glob(f"{WORKDIR_PREFIX}*@*-*"):
        owner = path.name.removeprefix(WORKDIR_PREFIX).rpartition("-")[0]
        pid, _, owner_host = owner.partition("@")
        if owner_host != host or not pid.isdigit() or not path.is_dir():
            continue
        if process_runs(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log.info("removed %d directories of actors that no longer run", len(removed))
    return removed


def read_blobs(paths: Sequence[Path]) -> tuple[Blob, ...]:
    """``paths`` as (name, bytes); names are made unique by their position."""
    return tuple(
        (f"{index:06d}-{path.name}", path.read_bytes()) for index, path in enumerate(paths)
    )


def _write_blobs(directory: Path, blobs: Sequence[Blob]) -> tuple[Path, ...]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in blobs:
        path = directory / Path(name).name  # never outside the directory
        path.write_bytes(data)
        paths.append(path)
    return tuple(paths)


class RoutineHost:
    """One routine loaded on this actor's device (see the module doc)."""

    def __init__(
        self,
        plugin: str,
        models: Mapping[str, Any],
        templates: Sequence[Blob] = (),
        gpu_memory_budget_mb: int | None = None,
        extra_plugins: Sequence[type[InferencePlugin]] = (),
    ) -> None:
        import ray
        import torch

        self._plugin = plugin
        remove_stale_workdirs(Path(tempfile.gettempdir()))
        self._workdir = Path(tempfile.mkdtemp(prefix=_workdir_prefix()))
        atexit.register(shutil.rmtree, self._workdir, ignore_errors=True)
        templates_dir: Path | None = None
        if templates:
            templates_dir = self._workdir / "templates"
            _write_blobs(templates_dir, templates)
        self._templates_dir = templates_dir
        gpu_ids = tuple(str(g) for g in ray.get_gpu_ids())
        self._device = "cuda" if gpu_ids and torch.cuda.is_available() else "cpu"
        self._registry = PluginRegistry(gpu_memory_budget_mb)
        for extra in extra_plugins:
            self._registry.register(extra)
        if plugin not in self._registry.names:
            self._registry.load_only(plugin, models, templates_dir)
        load_error: str | None = None
        try:  # load the model now: the first job finds it warm
            self._registry.get(plugin, torch.device(self._device))
        except Exception as exc:  # a job for it fails with the reason
            load_error = f"{type(exc).__name__}: {exc}"
        # The actor lives as long as a served node and runs the same jobs: its start-up
        # objects (torch, MONAI, the routine) are kept out of every full collection.
        heap_frozen = settle_heap()
        self._info = HostInfo(
            plugin=plugin,
            host=socket.gethostname(),
            pid=os.getpid(),
            node_id=ray.get_runtime_context().get_node_id(),
            device=self._device,
            gpu_ids=gpu_ids,
            workdir=str(self._workdir),
            load_error=load_error,
            heap_frozen=heap_frozen,
        )

    def info(self) -> HostInfo:
        return self._info

    def run(self, job: JobInput, shipment: Shipment | None) -> Returned:
        """Run ``job``; with a ``shipment`` its files are written here first."""
        started_at = time.time()
        jobdir = self._workdir / f"job-{job.job_id}-{uuid.uuid4().hex[:8]}"
        out = jobdir / "results"
        try:
            job = replace(
                job,
                device=self._device,
                result_dir=out if job.result_dir is not None else None,
                templates_dir=self._templates_dir,
                read_ahead=None,
            )
            if shipment is not None:
                job = self._materialise(job, shipment, jobdir)
            output = execute(job, self._registry)
            files: list[Blob] = []
            if output.result_dir is not None and out.is_dir():
                files = [(p.name, p.read_bytes()) for p in sorted(out.iterdir()) if p.is_file()]
            output = replace(
                output,
                result_dir=None,
                files=tuple(replace(f, path=Path(f.path.name)) for f in output.files),
            )
            return Returned(
                output, tuple(files), self._info, str(jobdir / "in"), started_at, time.time()
            )
        finally:
            shutil.rmtree(jobdir, ignore_errors=True)

    @staticmethod
    def _materialise(job: JobInput, shipment: Shipment, jobdir: Path) -> JobInput:
        """``job`` pointing at its shipped files, written under ``jobdir``."""
        instances = _write_blobs(jobdir / "in", shipment.instances)
        prior = job.prior
        if prior is not None and shipment.prior:
            prior = replace(prior, paths=_write_blobs(jobdir / "prior", shipment.prior))
        previous = None
        if shipment.previous_results:
            previous = jobdir / "previous"
            _write_blobs(previous, shipment.previous_results)
        return replace(job, instance_paths=instances, prior=prior, previous_result_dir=previous)

    def shutdown(self) -> None:
        shutil.rmtree(self._workdir, ignore_errors=True)
