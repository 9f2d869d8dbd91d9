"""Where a job's :func:`~node.orchestration.execute.execute` step runs.

An :class:`Executor` takes a :class:`~node.orchestration.job.JobInput` and returns a
future of its :class:`~node.orchestration.job.JobOutput`; the worker loop claims,
prepares, submits and records. Inputs and outputs are plain, picklable data, so an
executor may run jobs in other processes or on other machines.

:class:`LocalExecutor` is the node's own: one thread per device, each running one job
at a time with the plugins kept loaded in the registry's per-device cache (a job for a
device the executor was not given runs on its first device, the CPU when that is all
there is), and a reader thread that reads the next queued series while a job runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Protocol

import torch

from node.orchestration.execute import execute
from node.orchestration.job import JobInput, JobOutput
from node.orchestration.read_ahead import QuietReads, ReadAhead
from node.orchestration.registry import PluginRegistry

log = logging.getLogger(__name__)


class Executor(Protocol):
    """Runs jobs' ``execute`` step somewhere."""

    def submit(self, job: JobInput) -> Future[JobOutput]:
        """Start ``job``; the future gives its output (a job's own faults are in it)."""
        ...

    def shutdown(self) -> None:
        """Stop taking jobs and release the threads or processes."""
        ...


class JobLost(RuntimeError):
    """The executor lost the job (its actor or machine died, or it never came back): the
    job did not end and must run again."""


class QueueingExecutor(Executor, Protocol):
    """An executor that holds several jobs at once (sent away, or queued by priority)."""

    def has_room(self) -> bool:
        """True when one more job can be submitted and start soon."""
        ...


class _Device:
    """One device's job thread and reader."""

    def __init__(self, device: torch.device, quiet: QuietReads | None = None) -> None:
        self.device = device
        self.reader = ReadAhead(str(device), quiet)
        self.pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"execute-{device}", initializer=self._select
        )

    def _select(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # this thread's current device


class LocalExecutor:
    """One thread per device in this process (see the module doc)."""

    def __init__(
        self,
        registry: PluginRegistry,
        devices: Sequence[torch.device],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        quiet_reads: QuietReads | None = None,
    ) -> None:
        if not devices:
            raise ValueError("a LocalExecutor needs at least one device")
        self._registry = registry
        self._monotonic = monotonic
        self._devices = {str(device): _Device(device, quiet_reads) for device in devices}
        self._fallback = next(iter(self._devices.values()))

    def submit(self, job: JobInput) -> Future[JobOutput]:
        runner = self._devices.get(job.device, self._fallback)
        if runner is self._fallback and job.device not in self._devices:
            log.warning(
                "job for an unknown device runs on %s job_id=%d device=%s",
                runner.device,
                job.job_id,
                job.device,
            )
            job = replace(job, device=str(runner.device))
        return runner.pool.submit(
            execute, job, self._registry, reader=runner.reader, monotonic=self._monotonic
        )

    def shutdown(self) -> None:
        for runner in self._devices.values():
            runner.pool.shutdown(wait=False, cancel_futures=True)
            runner.reader.shutdown()
