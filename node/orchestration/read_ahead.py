"""Reading a series before its job needs it.

:class:`QuietReads` reads one series during its completion quiet period, before it becomes
a job, and measures it for the input-quality gate of the routines its rules name;
:class:`ReadAhead` is a device's reader: it hands a job the volume read for exactly its
files, else reads the next queued series while the current job runs, else reads the
job's files itself.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from node.contract import image_attributes
from node.contract.assemble import assemble_sources, load_volume
from node.contract.pixels import SourceFile, read_slice, read_source
from node.contract.plugin import ValidatedInput
from node.contract.volume import Volume
from node.engine.quality import (
    Measurements,
    SliceScan,
    is_scanned_as_ct,
    measure,
    slice_scanner,
)

log = logging.getLogger(__name__)


#: A file's identity: its size, change time (ns) and inode.
Identity = tuple[int, int, int]
#: The identities of a series' files for a read-ahead, with their paths.
FileKey = tuple[tuple[Path, int, int, int], ...]

#: Input-quality measurements of a volume read ahead, per routine input they were made for.
Premeasured = dict[ValidatedInput, Measurements]


def identity(path: Path) -> Identity:
    """What must be unchanged for something read of ``path`` to stand for it now."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def file_key(paths: tuple[Path, ...]) -> FileKey:
    """What must be unchanged for a volume read earlier to be the series' volume now."""
    return tuple((path, *identity(path)) for path in paths)


#: Gives a series' files so far and the inputs its routines were validated on, or None
#: when no rule routes it (called on the reader thread).
ArrivingFiles = Callable[[], tuple[Sequence[Path], Sequence[ValidatedInput]] | None]

#: A series still arriving is read each time this many more of its instances are stored.
ARRIVING_BATCH = 32
#: Series whose files read while arriving are kept at once (the least recently read
#: is dropped first); each keeps headers and per-slice scans, not pixels.
ARRIVING_SERIES = 4


class _ArrivedFile(NamedTuple):
    """A file read while its series arrived: its identity then (size, change time,
    inode), its header and, for a CT slice, its input-quality scan."""

    key: Identity
    source: SourceFile
    scan: SliceScan | None


class _Arrived:
    """The files of one series read so far while it arrives (reader thread only, but for
    :attr:`touched`)."""

    def __init__(self, touched: float) -> None:
        self.files: dict[Path, _ArrivedFile] = {}
        self.touched = touched
        self._shape: tuple[int, int] | None = None
        self._scan: Callable[[np.ndarray, Sequence[float]], SliceScan] | None = None
        self._pixels = np.empty(0, dtype=np.float32)
        self._stored: np.ndarray | None = None

    def read(self, path: Path, key: Identity, thresholds: tuple[float, ...]) -> None:
        """Parse ``path``'s header and, for a CT slice some routine gates, scan its pixels
        (the values its slice of the volume will hold)."""
        source = read_source(path)
        header = source.header
        # Converted now, in the arrival's time, rather than when the series is assembled.
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            header.get(keyword)
        scan = None
        if thresholds and is_scanned_as_ct(header) and not image_attributes.is_localizer(header):
            shape = (int(header.Rows), int(header.Columns))
            if shape != self._shape:
                self._shape, self._scan = shape, slice_scanner(shape)
                self._pixels = np.empty(shape, dtype=np.float32)
            assert self._scan is not None
            self._stored = read_slice(source, self._pixels, self._stored)
            scan = self._scan(self._pixels, thresholds)
        self.files[path] = _ArrivedFile(key, source, scan)


def _thresholds(validated: Sequence[ValidatedInput]) -> tuple[float, ...]:
    """The metal thresholds the routines' gates measure with (none: nothing to scan)."""
    return tuple(sorted({v.metal_threshold for v in validated}))


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

    While a series still arrives, :meth:`arriving` reads its new files on the same thread:
    each header is parsed and each CT slice scanned for the gate (:func:`scan_slice
    <node.engine.quality.scan_slice>`) then, so the read in the quiet period only
    assembles the volume (pixels read into place) and measures its noise. A file read
    then is used only while its size, change time and inode are unchanged.
    """

    def __init__(
        self,
        budget_bytes: int,
        *,
        keep_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
        arriving_batch: int = ARRIVING_BATCH,
    ) -> None:
        #: A series still arriving is read each time this many more instances are stored.
        self.arriving_batch = arriving_batch
        self._budget = budget_bytes
        self._keep = keep_seconds
        self._monotonic = monotonic
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-quiet")
        self._lock = threading.Lock()
        self._held: _HeldRead | None = None
        self._arrived: OrderedDict[str, _Arrived] = OrderedDict()
        self._arriving_queued: set[str] = set()

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

    def arriving(
        self,
        series_uid: str,
        resolve: ArrivingFiles,
    ) -> bool:
        """Read the files of a series still arriving that are not read yet, on the reader
        thread (after any read queued before). ``resolve``, called there, gives the
        series' files and the inputs its routines were validated on, or None when no rule
        routes it. False when a read of this series is queued already."""
        with self._lock:
            if series_uid in self._arriving_queued:
                return False
            self._arriving_queued.add(series_uid)
        try:
            self._pool.submit(self._read_arriving, series_uid, resolve)
        except RuntimeError:  # shut down
            return False
        return True

    def _read_arriving(
        self,
        series_uid: str,
        resolve: ArrivingFiles,
    ) -> None:
        with self._lock:
            self._arriving_queued.discard(series_uid)
        try:
            resolved = resolve()
            if resolved is None:
                return
            paths, validated = resolved
            self._remember(series_uid, tuple(paths), _thresholds(validated))
        except Exception as exc:  # the quiet read, or the job, meets it again and names it
            log.info(
                "reading an arriving series stopped series_uid=%s error=%s",
                series_uid,
                type(exc).__name__,
            )

    def _remember(
        self, series_uid: str, paths: tuple[Path, ...], thresholds: tuple[float, ...]
    ) -> None:
        """Read the files of ``paths`` not read yet (or changed since) into the series'
        arrivals, unless the series is over the budget."""
        identities = {path: identity(path) for path in paths}
        if 2 * sum(size for size, _, _ in identities.values()) > self._budget:
            return  # the quiet read will say so
        with self._lock:
            arrived = self._arrived.get(series_uid)
            if arrived is None:
                arrived = self._arrived[series_uid] = _Arrived(self._monotonic())
                while len(self._arrived) > ARRIVING_SERIES:
                    self._arrived.popitem(last=False)
            self._arrived.move_to_end(series_uid)
            arrived.touched = self._monotonic()
        unreadable = 0
        for path, seen in identities.items():
            known = arrived.files.get(path)
            if known is None or known.key != seen:
                try:
                    arrived.read(path, seen, thresholds)
                except Exception:  # pydicom raises many types; the quiet read or job names it
                    unreadable += 1
        if unreadable:
            log.info(
                "arriving files not read ahead series_uid=%s unreadable=%d",
                series_uid,
                unreadable,
            )

    def _read(
        self, series_uid: str, paths: tuple[Path, ...], validated: tuple[ValidatedInput, ...]
    ) -> tuple[Volume, FileKey, Premeasured] | None:
        started = time.perf_counter()
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
        with self._lock:
            arrived = self._arrived.get(series_uid)
        files = {} if arrived is None else arrived.files
        sources: list[SourceFile] = []
        scans: dict[Path, SliceScan | None] = {}  # of the files read while arriving
        for path, size, changed, inode in key:
            known = files.get(path)
            if known is not None and known.key == (size, changed, inode):
                sources.append(known.source)
                scans[path] = known.scan
            else:
                sources.append(read_source(path))
        volume, slices = assemble_sources(sources)
        if volume.array.nbytes > self._budget:
            log.info("read-ahead dropped: volume over the budget series_uid=%s", series_uid)
            return None
        with self._lock:
            superseded = self._held is not None and self._held.paths != paths  # None: taken
        if superseded:  # more instances arrived while reading: no use measuring this one
            return None
        scanned = [scans.get(source.path) for source in slices] if slices else None
        if scanned is not None and not any(scanned):
            scanned = None
        measured = {
            v: measure(volume.array, volume.datasets, v, scanned=scanned)
            for v in dict.fromkeys(validated)
        }
        log.info(
            "quiet read-ahead done series_uid=%s instances=%d read_while_arriving=%d seconds=%.3f",
            series_uid,
            len(paths),
            len(scans),
            time.perf_counter() - started,
        )
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
        finally:  # the series is a job now: what was read while it arrived is done with
            with self._lock:
                self._arrived.pop(held.series_uid, None)
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
        """Drop a read no job took within ``keep_seconds`` (its memory is returned), and
        the files of series that have not arrived for as long."""
        with self._lock:
            now = self._monotonic()
            for series_uid in [
                u for u, a in self._arrived.items() if now - a.touched >= self._keep
            ]:
                del self._arrived[series_uid]
            held = self._held
            if held is None or self._monotonic() - held.started < self._keep:
                return
            self._held = None
        held.read.cancel()
        log.info("read-ahead dropped: no job took it series_uid=%s", held.series_uid)

    def shutdown(self) -> None:
        with self._lock:
            self._held = None
            self._arrived.clear()
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
