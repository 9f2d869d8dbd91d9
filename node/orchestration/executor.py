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
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple, Protocol

import torch

from node.contract.assemble import load_volume
from node.contract.plugin import ValidatedInput
from node.contract.volume import Volume
from node.engine.quality import Measurements, measure
from node.orchestration.execute import execute
from node.orchestration.job import JobInput, JobOutput
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


#: A file's identity for a read-ahead: its path, size, change time and inode.
FileKey = tuple[tuple[Path, int, int, int], ...]

#: Input-quality measurements of a volume read ahead, per routine input they were made for.
Premeasured = dict[ValidatedInput, Measurements]


def file_key(paths: tuple[Path, ...]) -> FileKey:
    """What must be unchanged for a volume read earlier to be the series' volume now."""
    stats = [(path, path.stat()) for path in paths]
    return tuple((path, st.st_size, st.st_mtime_ns, st.st_ino) for path, st in stats)


class _HeldRead(NamedTuple):
    """A read of a quiet series: what was read, when it started, and its future (the
    volume, its files' key and its measurements; None when it was skipped)."""

    series_uid: str
    paths: tuple[Path, ...]
    started: float
    read: Future[tuple[Volume, FileKey, Premeasured] | None]


class QuietReads:
    """Reads one series during its completion quiet period, before it becomes a job.

    :meth:`offer` starts reading a series (on one background thread) unless a read of
    another series is held; the read is skipped when the volume would exceed ``budget_bytes``
    (estimated as twice the files' size, float32 pixels; checked again on the volume).
    :meth:`take` hands the volume to the job whose instance files are exactly the ones
    read and unchanged (same paths, sizes, change times, inodes), else None; a read no
    job took ``keep_seconds`` after it started is dropped (:meth:`expire`). The volume is
    also measured against each routine input offered with it (``validated``: the
    input-quality gate of the routines the matching rules name), so the job's gate only
    decides.
    """

    def __init__(
        self,
        budget_bytes: int,
        *,
        keep_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._budget = budget_bytes
        self._keep = keep_seconds
        self._monotonic = monotonic
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-quiet")
        self._lock = threading.Lock()
        self._held: _HeldRead | None = None

    def holds(self, paths: tuple[Path, ...]) -> bool:
        """True while a read of exactly ``paths`` is held."""
        with self._lock:
            return self._held is not None and self._held.paths == paths

    def offer(
        self,
        series_uid: str,
        paths: tuple[Path, ...],
        validated: Sequence[ValidatedInput] = (),
        *,
        trigger: str = "quiet",
    ) -> bool:
        """Start reading ``paths`` unless a read of another series, or of these paths, is
        held (one at a time); a held read of fewer instances of this series is replaced.
        True if started. ``trigger`` says why, in the log line (``quiet``: a part of the
        quiet period passed; ``delivered``: the association or STOW-RS request that
        delivered it ended)."""
        self.expire()
        with self._lock:
            held = self._held
            if not paths or (
                held is not None and (held.series_uid != series_uid or held.paths == paths)
            ):
                return False
            if held is not None:  # more instances arrived since: the old read is stale
                held.read.cancel()
            future = self._pool.submit(self._read, series_uid, paths, tuple(validated))
            self._held = _HeldRead(series_uid, paths, self._monotonic(), future)
        log.info(
            "quiet read-ahead started series_uid=%s instances=%d trigger=%s",
            series_uid,
            len(paths),
            trigger,
        )
        return True

    def _read(
        self, series_uid: str, paths: tuple[Path, ...], validated: tuple[ValidatedInput, ...]
    ) -> tuple[Volume, FileKey, Premeasured] | None:
        key = file_key(paths)
        estimate = 2 * sum(size for _, size, _, _ in key)
        if estimate > self._budget:
            log.info(
                "series not read ahead: over the read-ahead budget series_uid=%s"
                " estimate_mb=%d budget_mb=%d",
                series_uid,
                estimate >> 20,
                self._budget >> 20,
            )
            return None
        volume = load_volume(paths)
        if volume.array.nbytes > self._budget:
            log.info("read-ahead dropped: volume over the budget series_uid=%s", series_uid)
            return None
        with self._lock:
            superseded = self._held is not None and self._held.paths != paths  # None: taken
        if superseded:  # more instances arrived while reading: no use measuring this one
            return None
        measured = {v: measure(volume.array, volume.datasets, v) for v in dict.fromkeys(validated)}
        return volume, key, measured

    def take(self, paths: tuple[Path, ...]) -> tuple[Volume, Premeasured] | None:
        """The volume read ahead of exactly ``paths``, unchanged since, and its measurements
        (else None); waits for a read still in progress."""
        with self._lock:
            held = self._held
            if held is None or held.paths != paths:
                return None
            self._held = None
        try:
            read = held.read.result()
        except Exception as exc:  # the job's own read meets it again and names the fault
            log.info(
                "read-ahead failed: reading again series_uid=%s error=%s",
                held.series_uid,
                type(exc).__name__,
            )
            return None
        if read is None:
            return None
        volume, key, measured = read
        try:
            same = file_key(paths) == key
        except OSError:
            same = False
        if not same:
            log.info(
                "read-ahead stale (a file changed): reading again series_uid=%s", held.series_uid
            )
            return None
        return volume, measured

    def expire(self) -> None:
        """Drop a read no job took within ``keep_seconds`` (its memory is returned)."""
        with self._lock:
            held = self._held
            if held is None or self._monotonic() - held.started < self._keep:
                return
            self._held = None
        held.read.cancel()
        log.info("read-ahead dropped: no job took it series_uid=%s", held.series_uid)

    def shutdown(self) -> None:
        with self._lock:
            self._held = None
        self._pool.shutdown(wait=True, cancel_futures=True)


class ReadAhead:
    """Reads series on one background thread; a read is used only by the job it was for
    and only while that job's instances are unchanged. A series read during its quiet
    period (``quiet``) is used by the first job whose instance files are exactly those."""

    def __init__(self, name: str, quiet: QuietReads | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"read-{name}")
        self._pending: tuple[int, tuple[Path, ...], Future[Volume]] | None = None
        self._quiet = quiet
        #: The last volume taken from ``quiet`` (weakly: the job owns it) and its measurements.
        self._measured: tuple[weakref.ref[Volume], Premeasured] | None = None

    def read(self, job_id: int, paths: tuple[Path, ...]) -> tuple[Volume, bool]:
        pending, self._pending = self._pending, None
        self._measured = None
        if pending is not None and pending[:2] == (job_id, paths):
            return pending[2].result(), True
        if self._quiet is not None:
            taken = self._quiet.take(paths)
            if taken is not None:
                self._measured = (weakref.ref(taken[0]), taken[1])
                return taken[0], True
        return load_volume(paths), False

    def measured(self, volume: Volume, validated: ValidatedInput) -> Measurements | None:
        """What the quiet read measured of ``volume`` against ``validated``, if it did."""
        held = self._measured
        if held is None or held[0]() is not volume:
            return None
        return held[1].get(validated)

    def read_ahead(self, job_id: int, paths: tuple[Path, ...]) -> None:
        if self._pending is not None and self._pending[:2] == (job_id, paths):
            return
        if self._quiet is not None and self._quiet.holds(paths):
            return  # read during its quiet period already
        self._pending = (job_id, paths, self._pool.submit(load_volume, paths))
        log.debug("prefetch started job_id=%d instances=%d", job_id, len(paths))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


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
