"""Issue 14, the ``load`` stage: a series read during its completion quiet period is used
by its job only when the instance files are exactly those read (no stale volume), within
the memory budget, and dropped when no job takes it."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from node.config import QualitySettings
from node.contract.assemble import load_volume
from node.contract.plugin import ValidatedInput
from node.contract.volume import Volume
from node.engine.quality import Measurements, measure, slice_layout
from node.errors import VolumeError
from node.orchestration.completion import READ_AHEAD_FRACTION, CompletionMonitor
from node.orchestration.gate import gate_series
from node.orchestration.read_ahead import QuietReads, ReadAhead
from node.state.series import SeriesRow, SeriesStore
from tests.test_completion_and_jobs import record
from tools.synthetic.chest_ct import make_chest_ct, write_series

BIG = 1 << 30


@pytest.fixture(scope="module")
def series() -> list[Dataset]:
    datasets, _ = make_chest_ct(n_slices=10, rows=32, columns=32, seed=5)
    return datasets


@pytest.fixture
def paths(series, tmp_path) -> tuple[Path, ...]:
    return tuple(write_series(series, tmp_path / "s"))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def assert_same_volume(volume: Volume, paths: tuple[Path, ...]) -> Volume:
    """``volume`` is the series' own read (``load_volume``), which is returned."""
    reference = load_volume(paths)
    assert np.array_equal(volume.array, reference.array)
    assert np.array_equal(volume.affine, reference.affine)
    assert volume.spacing == reference.spacing
    assert volume.datasets == reference.datasets
    return reference


def _reads(budget: int = BIG, keep: float = 60.0, clock: Clock | None = None) -> QuietReads:
    return QuietReads(budget, keep_seconds=keep, monotonic=clock or Clock())


def test_the_job_takes_the_volume_read_ahead_identical_to_its_own_read(paths):
    reads = _reads()
    try:
        assert reads.offer("1.2", paths)
        reader = ReadAhead("t", reads)
        volume, prefetched = reader.read(7, paths)
        assert prefetched
        assert_same_volume(volume, paths)
        assert not reads.holds(paths)  # taken once: the next read is its own
        assert reader.read(8, paths)[1] is False
    finally:
        reads.shutdown()


def test_a_late_instance_makes_the_job_read_again(paths, series, tmp_path):
    reads = _reads()
    try:
        reads.offer("1.2", paths[:-1])  # read before the last instance arrived
        volume, prefetched = ReadAhead("t", reads).read(1, paths)
        assert not prefetched and volume.shape[0] == len(paths)
    finally:
        reads.shutdown()


def test_a_replaced_file_makes_the_job_read_again(paths, series):
    reads = _reads()
    try:
        reads.offer("1.2", paths)
        assert reads.holds(paths)
        reads._held[3].result()  # the read is done, then a file is replaced
        replaced = series[0].copy()
        replaced.PixelData = bytes(len(series[0].PixelData))
        tmp = paths[0].with_suffix(".new")
        replaced.save_as(tmp, enforce_file_format=True)
        tmp.replace(paths[0])
        volume, prefetched = ReadAhead("t", reads).read(1, paths)
        assert not prefetched
        assert np.array_equal(volume.array, load_volume(paths).array)
    finally:
        reads.shutdown()


def test_a_series_over_the_budget_is_not_read_ahead(paths, caplog):
    caplog.set_level(logging.INFO, logger="node.orchestration.read_ahead")
    size = sum(path.stat().st_size for path in paths)
    reads = _reads(budget=size)  # the volume needs about twice the files' size
    try:
        reads.offer("1.2", paths)
        assert ReadAhead("t", reads).read(1, paths)[1] is False
        assert any("over the read-ahead budget" in r.getMessage() for r in caplog.records)
    finally:
        reads.shutdown()
    fits = _reads(budget=4 * size)
    try:
        fits.offer("1.2", paths)
        assert ReadAhead("t", fits).read(1, paths)[1] is True
    finally:
        fits.shutdown()


def test_one_series_at_a_time_and_dropped_when_no_job_takes_it(paths, caplog):
    caplog.set_level(logging.INFO, logger="node.orchestration.read_ahead")
    clock = Clock()
    reads = _reads(keep=30.0, clock=clock)
    try:
        assert reads.offer("1.2", paths)
        assert not reads.offer("1.3", paths[:3])  # one held: the rest are skipped
        clock.now += 29.0
        reads.expire()
        assert reads.holds(paths)
        clock.now += 2.0
        reads.expire()
        assert not reads.holds(paths)
        assert any("no job took it" in r.getMessage() for r in caplog.records)
        assert reads.offer("1.3", paths[:3])  # room again
        assert not reads.offer("1.3", paths[:3])  # read already
        assert reads.offer("1.3", paths[:4])  # an instance more: the stale read is replaced
        assert reads.holds(paths[:4]) and not reads.holds(paths[:3])
    finally:
        reads.shutdown()


def test_shutdown_stops_the_reader_thread(paths):
    before = {t.name for t in threading.enumerate()}
    reads = _reads()
    reads.offer("1.2", paths)
    reads.shutdown()
    assert {t.name for t in threading.enumerate()} - before == set()


def test_completion_offers_series_quiet_for_part_of_the_period(database, clock):
    store = SeriesStore(database)
    seen: list[list[SeriesRow]] = []
    mon = CompletionMonitor(
        store,
        quiet_seconds=10.0,
        clock=clock,
        on_complete=lambda row: None,
        on_quieting=seen.append,
    )
    store.record_instance(record("1.9.1"), clock())
    assert mon.next_quiet_at() == pytest.approx(clock() + 10.0 * READ_AHEAD_FRACTION)
    mon.poll()
    assert seen[-1] == []
    clock.advance(10.0 * READ_AHEAD_FRACTION)
    assert mon.poll() == []  # not complete yet, but quiet long enough to read ahead
    assert [row.series_uid for row in seen[-1]] == ["1.2.3.1"]
    assert mon.next_quiet_at() == pytest.approx(clock() + 10.0 * (1 - READ_AHEAD_FRACTION))
    clock.advance(10.0)
    assert [row.series_uid for row in mon.poll()] == ["1.2.3.1"]
    assert seen[-1] == []  # complete: no longer read ahead


def test_the_quiet_read_measures_for_the_routine_and_the_gate_only_decides(paths):
    validated = ValidatedInput(modalities=("CT",), metal_threshold=2000.0)
    other = ValidatedInput(modalities=("CT",), metal_threshold=3000.0)
    reads = _reads()
    try:
        assert reads.offer("1.2", paths, [validated, validated])
        reader = ReadAhead("t", reads)
        volume, prefetched = reader.read(7, paths)
        assert prefetched
        reference = load_volume(paths)
        expected = measure(reference.array, reference.datasets, validated)
        assert reader.measured(volume, validated) == expected
        assert reader.measured(volume, other) is None  # measured only for what was offered
        assert reader.measured(reference, validated) is None  # another volume

        gated = gate_series(
            lambda: volume, paths, validated, QualitySettings(), premeasured=reader.measured
        )
        assert gated.measured_ahead and gated.measured == expected
        plain = gate_series(lambda: reference, paths, validated, QualitySettings())
        assert not plain.measured_ahead
        assert plain.measured == gated.measured and plain.decision == gated.decision

        # The next read is the job's own: nothing measured ahead is offered for it.
        again, prefetched = reader.read(8, paths)
        assert not prefetched and reader.measured(again, validated) is None
    finally:
        reads.shutdown()


def test_the_gate_uses_what_the_reader_measured(paths):
    volume = load_volume(paths)
    validated = ValidatedInput(modalities=("CT",))
    made_earlier = Measurements(slice_layout(volume.datasets), noise=1234.5)
    gated = gate_series(
        lambda: volume,
        paths,
        validated,
        QualitySettings(),
        premeasured=lambda v, val: made_earlier if v is volume and val == validated else None,
    )
    assert gated.measured is made_earlier and gated.measured_ahead


def test_a_read_superseded_while_running_is_not_measured(paths):
    validated = ValidatedInput(modalities=("CT",))
    reads = _reads()
    try:
        assert reads.offer("1.2", paths, [validated])
        # The read of one instance fewer, finishing after the whole series was offered:
        # it is dropped before its measurements are made.
        assert reads._read("1.2", paths[:-1], (validated,)) is None
        taken = reads.take(paths)
        assert taken is not None and list(taken[1]) == [validated]
    finally:
        reads.shutdown()


def test_a_failed_read_ahead_leaves_the_job_its_own_read_and_one_log_line(paths, caplog):
    broken = pydicom.dcmread(paths[1])
    del broken.PixelSpacing
    broken.save_as(paths[1], enforce_file_format=True)
    reads = _reads()
    try:
        assert reads.offer("1.2", paths)
        with caplog.at_level(logging.INFO, logger="node.orchestration.read_ahead"):
            assert reads.take(paths) is None
            with pytest.raises(VolumeError, match="lacks PixelSpacing"):
                ReadAhead("t", reads).read(1, paths)  # the job meets the fault itself
        failed = [r for r in caplog.records if "read-ahead failed" in r.getMessage()]
        assert [r.getMessage().split("error=")[1] for r in failed] == ["VolumeError"]
        assert all(r.exc_info is None for r in caplog.records)  # no traceback for bad input
    finally:
        reads.shutdown()


# -- read while arriving ------------------------------------------------------------


def _drained(reads: QuietReads) -> None:
    """Wait until the reader thread has done everything queued so far."""
    reads._pool.submit(lambda: None).result()


def _done_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "quiet read-ahead done" in r.getMessage()]


def test_a_series_read_while_arriving_gives_the_same_volume_and_measurements(paths, caplog):
    caplog.set_level(logging.INFO, logger="node.orchestration.read_ahead")
    validated = ValidatedInput(modalities=("CT",), metal_threshold=2000.0)
    reads = _reads()
    try:
        assert reads.arriving("1.2", lambda: (paths[:6], [validated]))
        _drained(reads)
        assert reads.arriving("1.2", lambda: (paths[:8], [validated]))
        _drained(reads)
        arrived = reads._arrived["1.2"].files
        assert sorted(arrived) == sorted(paths[:8])
        assert all(f.scan is not None and 2000.0 in f.scan.metal for f in arrived.values())
        assert reads.offer("1.2", paths, [validated])
        reader = ReadAhead("t", reads)
        volume, prefetched = reader.read(1, paths)
        assert prefetched
        reference = assert_same_volume(volume, paths)
        expected = measure(reference.array, reference.datasets, validated)
        assert reader.measured(volume, validated) == expected
        (done,) = _done_lines(caplog)
        assert f"instances={len(paths)} read_while_arriving=8 " in done
        assert "1.2" not in reads._arrived  # taken: the series' files are forgotten
    finally:
        reads.shutdown()


def test_a_file_replaced_after_it_was_read_while_arriving_is_read_again(paths, series, caplog):
    caplog.set_level(logging.INFO, logger="node.orchestration.read_ahead")
    validated = ValidatedInput(modalities=("CT",), metal_threshold=2000.0)
    reads = _reads()
    try:
        reads.arriving("1.2", lambda: (paths, [validated]))
        _drained(reads)
        stale = reads._arrived["1.2"].files[paths[3]].scan
        assert stale is not None and stale.metal[2000.0] == 0
        replaced = pydicom.dcmread(paths[3])
        pixels = replaced.pixel_array.copy()
        pixels[: pixels.shape[0] // 2] = 4095  # metal over half the slice
        replaced.PixelData = pixels.tobytes()
        tmp = paths[3].with_suffix(".new")
        replaced.save_as(tmp, enforce_file_format=True)
        tmp.replace(paths[3])
        reads.offer("1.2", paths, [validated])
        reader = ReadAhead("t", reads)
        volume, prefetched = reader.read(1, paths)
        assert prefetched
        reference = load_volume(paths)
        assert np.array_equal(volume.array, reference.array)
        measured = reader.measured(volume, validated)
        assert measured == measure(reference.array, reference.datasets, validated)
        assert measured is not None and measured.metal_fraction
        (done,) = _done_lines(caplog)
        assert f"read_while_arriving={len(paths) - 1} " in done
    finally:
        reads.shutdown()


def test_reading_while_arriving_only_what_is_routed_and_readable(paths, caplog):
    caplog.set_level(logging.INFO, logger="node.orchestration.read_ahead")
    reads = _reads()
    try:
        reads.arriving("not.routed", lambda: None)

        def broken() -> None:
            raise RuntimeError("database gone")

        reads.arriving("1.3", broken)  # type: ignore[arg-type]
        # No routine gates the series: headers only, nothing scanned.
        reads.arriving("1.4", lambda: (paths, []))
        _drained(reads)
        assert set(reads._arrived) == {"1.4"}
        assert all(f.scan is None for f in reads._arrived["1.4"].files.values())
        stopped = [
            r.getMessage() for r in caplog.records if "arriving series stopped" in r.getMessage()
        ]
        assert stopped == ["reading an arriving series stopped series_uid=1.3 error=RuntimeError"]

        paths[2].write_bytes(b"not DICOM " * 50)  # a sender's garbage
        reads.arriving("1.5", lambda: (paths, [ValidatedInput(modalities=("CT",))]))
        _drained(reads)
        assert sorted(reads._arrived["1.5"].files) == sorted(set(paths) - {paths[2]})
        assert any(
            "arriving files not read ahead series_uid=1.5 unreadable=1" in r.getMessage()
            for r in caplog.records
        )
        # The quiet read meets the file and names it; the job reads (and fails) on its own.
        reads.offer("1.5", paths)
        assert reads.take(paths) is None
        with pytest.raises(VolumeError, match=paths[2].name):
            ReadAhead("t", reads).read(1, paths)
    finally:
        reads.shutdown()


def test_series_read_while_arriving_are_bounded_and_expire(paths):
    clock = Clock()
    reads = _reads(keep=30.0, clock=clock)
    try:
        for uid in ("a", "b", "c", "d", "e"):
            reads.arriving(uid, lambda: (paths[:2], []))
            _drained(reads)
            clock.now += 1.0
        assert list(reads._arrived) == ["b", "c", "d", "e"]  # the least recent dropped
        clock.now += 26.5  # "b" idle for 30 s, "c" for 29
        reads.expire()
        assert list(reads._arrived) == ["c", "d", "e"]
        clock.now += 10.0
        reads.expire()
        assert not reads._arrived
    finally:
        reads.shutdown()


def test_one_read_of_an_arriving_series_queued_at_a_time_and_none_over_the_budget(paths):
    size = sum(path.stat().st_size for path in paths)
    reads = _reads(budget=size)  # the volume needs about twice the files' size
    try:
        gate = threading.Event()
        reads._pool.submit(gate.wait)  # the reader is busy
        calls: list[int] = []

        def resolve() -> tuple[tuple[Path, ...], list[ValidatedInput]]:
            calls.append(1)
            return paths, []

        assert reads.arriving("1.2", resolve)
        assert not reads.arriving("1.2", resolve)  # one queued already: it reads the latest
        assert reads.arriving("1.3", resolve)
        gate.set()
        _drained(reads)
        assert len(calls) == 2
        assert not reads._arrived  # over the budget: not read
        assert reads.arriving("1.2", resolve)  # queued no longer
    finally:
        reads.shutdown()
