"""The input-quality gate's per-slice scan at its fast formulation (flat erosion, the
Laplacian over the rows the mask reaches, the streak percentile from two order
statistics, blocks of slices on threads) against the reference formulas kept in
tests/test_quality_vectorised.py: the same floats, bit for bit, on CT with noise, metal,
clipping, NaN and infinities, across block boundaries, on 2D images, tiny series and odd
slice sizes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from node.engine import quality
from tests.test_quality_vectorised import (
    _measured,
    _ref_mask,
    _ref_measure,
    _ref_slice_values,
    _same,
    _volume,
    assert_same_as_reference,
)

_BODY, _TISSUE = quality.BODY_HU, quality.TISSUE_HU


def _ref_percentile(magnitudes: np.ndarray) -> float:
    return float(np.percentile(magnitudes, 95.0))


def _check_percentile(magnitudes: np.ndarray) -> None:
    expected = _ref_percentile(magnitudes)
    found = quality._magnitude_percentile(magnitudes.copy())
    assert _same(found, expected), (magnitudes.size, found, expected)


def test_the_streak_percentile_is_numpys_at_every_size() -> None:
    """Every size up to 700 and sizes of whole slices (the interpolation weight depends
    on the size alone: below and above a half), with ties, whole and fractional values."""
    rng = np.random.default_rng(11)
    sizes = [*range(1, 701), 20_001, 99_072, 131_071, 262_144]
    for size in sizes:
        integers = np.abs(np.rint(rng.normal(0, 40, size))).astype(np.float32)
        _check_percentile(integers)
        _check_percentile(np.abs(rng.normal(0, 1e3, size)).astype(np.float32))
        _check_percentile(rng.integers(0, 3, size).astype(np.float32))  # mostly ties
    weights = {((n - 1) * quality._STREAK_QUANTILE) % 1 >= 0.5 for n in sizes}
    assert weights == {True, False}


def test_a_run_of_ties_in_the_sample_is_confirmed_by_counting() -> None:
    """A sample all at one value while the wanted ranks hold others (the counts refuse
    the sample's value), and runs of ties at, below and above the wanted ranks."""
    rng = np.random.default_rng(5)
    size = 8 * quality._TIE_SAMPLE
    step = size // quality._TIE_SAMPLE
    misleading = rng.uniform(0.0, 10.0, size).astype(np.float32)
    misleading[::step] = 5.0  # every sampled magnitude
    _check_percentile(misleading)
    for value in (0.0, 1.0, 2.0, 3.0):
        runs = np.where(rng.random(size) < 0.9, value, rng.integers(0, 4, size)).astype(np.float32)
        _check_percentile(runs)
    edge = np.zeros(size, dtype=np.float32)
    at = int((size - 1) * quality._STREAK_QUANTILE)
    edge[at + 1 :] = 7.0  # the run ends just at the wanted rank: the next one differs
    _check_percentile(rng.permutation(edge))
    edge[at:] = 7.0  # it starts there
    _check_percentile(rng.permutation(edge))


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.floats(0, 3.0000000054977558e38, width=32)
        | st.sampled_from([0.0, 1.0, 2.0, np.inf, np.nan, 3.4028235e38]),
        min_size=1,
        max_size=300,
    )
)
def test_the_streak_percentile_is_numpys_for_any_magnitudes(values: list[float]) -> None:
    """Ties, huge values (their difference overflows), infinities and NaN."""
    magnitudes = np.abs(np.asarray(values, dtype=np.float32))  # no -0.0
    with np.errstate(all="ignore"):
        expected = _ref_percentile(magnitudes)
        found = quality._magnitude_percentile(magnitudes.copy())
    assert _same(found, expected), (found, expected)


@pytest.mark.parametrize(
    "shape", [(7, 7), (7, 9), (9, 7), (8, 13), (13, 8), (31, 17), (64, 64), (512, 512)]
)
def test_the_flat_erosion_and_laplacian_are_the_reference(shape: tuple[int, int]) -> None:
    """Masks touching every border (a box running over a row's end wraps onto the next
    row in flat indices), empty and full masks, non-finite pixels outside the mask."""
    rng = np.random.default_rng(sum(shape))
    slices = quality._Slices(*shape)
    images = [
        np.full(shape, 20.0, dtype=np.float32),  # all inside: the whole interior
        np.full(shape, -1024.0, dtype=np.float32),  # none inside
        rng.normal(0.0, 60.0, shape).astype(np.float32),
        rng.normal(0.0, 200.0, shape).astype(np.float32),
    ]
    striped = np.full(shape, 30.0, dtype=np.float32)
    striped[:, ::6] = 900.0  # columns outside the window, so boxes end at row ends
    striped[::5, :] = np.nan
    striped[2, 2] = np.inf
    images.append(striped)
    edge = np.full(shape, 30.0, dtype=np.float32)
    edge[0, :] = edge[:, -1] = -np.inf  # the border itself outside the window
    images.append(edge)
    for image in images:
        for window in (_BODY, _TISSUE):
            expected = _ref_mask(image, window)
            mask = slices.homogeneous_mask(image, window).reshape(shape)
            assert np.array_equal(mask[1:-1, 1:-1], expected)
            assert not mask[[0, -1]].any() and not mask[:, [0, -1]].any()
            values = slices.values(image, window)
            (reference,) = _ref_slice_values(image[np.newaxis], window)
            assert _same(values, reference)
            sampled = slices.values(image, window, every=7)
            assert _same(sampled, reference[:: max(1, reference.size // 7)])


def _ct_with(slices: int, rows: int, columns: int, seed: int, *, metal: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    array = _volume(seed, (slices, rows, columns), 40.0, 15.0, "float32", (), True, False)
    if metal:
        array[rng.integers(0, slices, 3), rows // 2, columns // 3 : columns // 2] = 3071.0
    return array


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_blocks_on_threads_measure_as_the_reference(threads: int) -> None:
    """Volumes of several blocks of slices: the series' extremes, metal and NaN in
    different blocks, a lower maximum in a later block, every order of the blocks."""
    block = quality._SCAN_BLOCK
    volumes = [
        _ct_with(3 * block + 5, 40, 40, 1),
        _ct_with(2 * block + 1, 33, 47, 2, metal=True),
        _ct_with(70, 24, 24, 3),  # more than 64 slices: every second slice for the noise
    ]
    clipped = _ct_with(2 * block + 3, 32, 32, 4)
    clipped[block:] = np.minimum(clipped[block:], 60.0)  # clipped in later blocks only
    clipped[0] = np.minimum(clipped[0], 55.0)
    volumes.append(clipped)
    with_nan = _ct_with(2 * block + 2, 32, 32, 5)
    with_nan[block + 3, 4, 4] = np.nan
    volumes.append(with_nan)
    no_air = np.random.default_rng(7).normal(40.0, 30.0, (2 * block + 3, 24, 24))
    volumes.append(np.clip(no_air, 0.0, 80.0).astype(np.float32))  # both ends count
    volumes.append(np.clip(no_air, -999.0, 80.0).astype(np.float32)[::-1].copy())
    high_late = _ct_with(3 * block, 20, 20, 6, metal=True)
    high_late[2 * block + 1, 3, 3] = 5000.0
    high_late[1, 3, 3] = -3000.0
    volumes.append(high_late)
    for array in volumes:
        scan = quality._scan_ct(array, 2500.0, threads=threads)
        single = quality._scan_ct(array, 2500.0, threads=1)
        assert repr(scan) == repr(single)
        for threshold in (2500.0, 100.0):
            quality_threads = quality._SCAN_THREADS
            quality._SCAN_THREADS = threads
            try:
                found = _measured(array, threshold)
            finally:
                quality._SCAN_THREADS = quality_threads
            expected = _ref_measure(array, threshold)
            assert all(_same(a, b) for a, b in zip(found, expected, strict=True)), (
                found,
                expected,
            )


@pytest.mark.parametrize(
    "shape",
    [(1, 512, 512), (2, 7, 7), (5, 7, 300), (17, 9, 11), (4, 6, 40), (3, 3, 3), (1, 1, 1)],
)
def test_tiny_and_odd_series_measure_as_the_reference(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(shape[0] * 7 + shape[2])
    array = rng.normal(30.0, 12.0, shape).astype(np.float32)
    assert_same_as_reference(array)
    assert_same_as_reference(np.full(shape, -1024.0, dtype=np.float32))


def test_two_dimensional_images_measure_as_the_reference() -> None:
    """Projection images (frames measured on their own) and a CT array that is not a
    volume go through the unchanged formulas."""
    rng = np.random.default_rng(9)
    frames = np.minimum(rng.normal(500.0, 200.0, (4, 64, 48)), 700.0).astype(np.float32)
    header = Dataset()
    header.Modality = "DX"
    header.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray for presentation
    validated = quality.ValidatedInput(modalities=("DX",))
    measured = quality.measure(frames, [header], validated)
    expected = max(float(np.count_nonzero(frame == frame.max())) / frame.size for frame in frames)
    assert measured.clipped_fraction == expected
    plane = rng.normal(30.0, 12.0, (64, 64)).astype(np.float32)
    found = _measured(plane)
    assert found[0] is None  # no noise measured on a single plane
    assert all(_same(a, b) for a, b in zip(found, _ref_measure(plane, 2500.0), strict=True))


def test_slices_scanned_one_at_a_time_measure_as_the_series_scan() -> None:
    """Slices scanned on their own as they arrive (:func:`quality.scan_slice`, in any
    order, some not at all, with several metal thresholds) give the series' measurements
    bit for bit; a threshold they were not scanned for is scanned again."""
    block = quality._SCAN_BLOCK
    high_late = _ct_with(3 * block, 20, 20, 6, metal=True)
    high_late[2 * block + 1, 3, 3] = 5000.0
    high_late[1, 3, 3] = -3000.0
    no_air = np.random.default_rng(7).normal(40.0, 30.0, (2 * block + 3, 24, 24))
    with_nan = _ct_with(2 * block + 2, 32, 32, 5)
    with_nan[block + 3, 4, 4] = np.nan
    volumes = [
        _ct_with(70, 24, 24, 3),
        high_late,
        np.clip(no_air, 0.0, 80.0).astype(np.float32),  # both ends count
        with_nan,
        _ct_with(3, 5, 5, 8),  # too small to measure: no Laplacian
    ]
    rng = np.random.default_rng(2)
    for array in volumes:
        scan = quality.slice_scanner(array.shape[1:])
        scanned: list[quality.SliceScan | None] = [None] * array.shape[0]
        for k in rng.permutation(array.shape[0]):  # arrival order is not the volume's
            scanned[k] = scan(array[k], (2500.0, 100.0))
        scanned[rng.integers(array.shape[0])] = None  # one slice not read ahead
        for threshold in (2500.0, 100.0, 40.0):
            validated = quality.ValidatedInput(modalities=("CT",), metal_threshold=threshold)
            header = Dataset()
            header.Modality = "CT"
            plain = quality.measure(array, [header], validated)
            known = quality.measure(array, [header], validated, scanned=scanned)
            assert repr(known) == repr(plain), (threshold, known, plain)
    with pytest.raises(ValueError, match="2 slices scanned for a volume of 3"):
        quality.measure(volumes[-1], [header], validated, scanned=[None, None])
